# Trained runs -> per-patient segmentation scores (BraTS) or per-image fusion scores (paired data),
# plus the example arrays that the figures show.


rule evaluate_segmentation:
    input:
        model=rules.train.output.model,
        store=lambda w: store_files(w.dataset),
    output:
        scores=f"{RESULTS}/{{dataset}}/{{run}}/seed{{seed}}/seg_scores.csv",
        settings=f"{RESULTS}/{{dataset}}/{{run}}/seed{{seed}}/seg_scores.json",
        examples=f"{RESULTS}/{{dataset}}/{{run}}/seed{{seed}}/examples.npz",
    wildcard_constraints:
        dataset=one_of(BRATS),
    params:
        store=lambda w: f"{RESULTS}/{w.dataset}/store",
        run=lambda w: f"{RESULTS}/{w.dataset}/{w.run}/seed{w.seed}",
    threads: config["threads_per_job"]
    resources:
        gpu=1,
    log:
        f"{RESULTS}/logs/{{dataset}}/{{run}}/seed{{seed}}/evaluate.log",
    conda:
        ENV
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/{{run}}/seed{{seed}}/evaluate.tsv"
    shell:
        "python -m benchmark evaluate --run {params.run} --store {params.store} --threads {threads} > {log} 2>&1"


use rule evaluate_segmentation as evaluate_fusion with:
    output:
        scores=f"{RESULTS}/{{dataset}}/{{run}}/seed{{seed}}/fusion_scores.csv",
        settings=f"{RESULTS}/{{dataset}}/{{run}}/seed{{seed}}/fusion_scores.json",
        examples=f"{RESULTS}/{{dataset}}/{{run}}/seed{{seed}}/examples.npz",
    wildcard_constraints:
        dataset=one_of(PAIRED),
