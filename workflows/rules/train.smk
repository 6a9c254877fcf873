# One trained model per (dataset, run, seed); a run is a method or one of its ablation variants.


rule run_config:
    output:
        f"{RESULTS}/{{dataset}}/{{run}}/seed{{seed}}/config.json",
    params:
        config=lambda w: PLAN.run_config(PLAN.find(w.dataset, w.run, w.seed)),
    log:
        f"{RESULTS}/logs/{{dataset}}/{{run}}/seed{{seed}}/run_config.log",
    run:
        from benchmark.training.checkpoint import write_json

        write_json(output[0], params.config)


rule train:
    input:
        config=rules.run_config.output[0],
        store=lambda w: store_files(w.dataset),
    output:
        model=f"{RESULTS}/{{dataset}}/{{run}}/seed{{seed}}/model.safetensors",
        info=f"{RESULTS}/{{dataset}}/{{run}}/seed{{seed}}/run.json",
        train_log=f"{RESULTS}/{{dataset}}/{{run}}/seed{{seed}}/train_log.csv",
    params:
        store=lambda w: f"{RESULTS}/{w.dataset}/store",
        out=lambda w: f"{RESULTS}/{w.dataset}/{w.run}/seed{w.seed}",
    threads: config["threads_per_job"]
    resources:
        gpu=1,
    log:
        f"{RESULTS}/logs/{{dataset}}/{{run}}/seed{{seed}}/train.log",
    conda:
        ENV
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/{{run}}/seed{{seed}}/train.tsv"
    shell:
        "python -m benchmark train --config {input.config} --store {params.store} --out {params.out} --threads {threads} > {log} 2>&1"
