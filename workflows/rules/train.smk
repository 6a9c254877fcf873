# One trained model per (dataset, run, seed); a run is a method or one of its ablation variants.
# Disjoint pipelines (a fusion method on BraTS) go through three rules: train the fusion method, fuse each
# store split once (fused_store/), train the shared follower on the fused store (follower/).
# A training job re-runs when its record (config.json), its stores or its code (`code`: the version of the method's
# code and the framework's training code) change; it resumes a checkpoint only of the same fingerprint.


rule run_config:
    output:
        f"{RUN_DIR}/config.json",
    params:
        record=lambda w: PLAN.record(spec_of(w)).to_dict(),
    log:
        f"{RESULTS}/logs/{{dataset}}/{{run}}/seed{{seed}}/run_config.log",
    run:
        from benchmark.record import RunConfig

        RunConfig.from_dict(params.record).write(output[0])


rule follower_config:
    output:
        f"{RUN_DIR}/follower/config.json",
    params:
        record=lambda w: PLAN.follower_run(spec_of(w)).to_dict(),
    log:
        f"{RESULTS}/logs/{{dataset}}/{{run}}/seed{{seed}}/follower_config.log",
    run:
        from benchmark.record import FollowerRun

        FollowerRun.from_dict(params.record).write(output[0])


rule train:
    input:
        config=rules.run_config.output[0],
        store=lambda w: store_files(w.dataset, ("train", "val")),
    output:
        model=f"{RUN_DIR}/model.safetensors",
        info=f"{RUN_DIR}/run.json",
        train_log=f"{RUN_DIR}/train_log.csv",
    params:
        store=lambda w: f"{RESULTS}/{w.dataset}/store",
        out=run_dir,
        device=config["device"],
        code=lambda w: PLAN.code_version(spec_of(w).method),
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
        "python -m benchmark train --config {input.config} --store {params.store} --out {params.out} "
        "--device {params.device} --threads {threads} > {log} 2>&1"


rule fuse:
    input:
        model=rules.train.output.model,
        store=lambda w: store_files(w.dataset, fused_splits(spec_of(w).pipeline)),
    output:
        expand(f"{RUN_DIR}/fused_store/{{split}}.h5", split=["train", "val", "test"], allow_missing=True),
    wildcard_constraints:
        dataset=one_of(BRATS),
        run=one_of(sorted({s.run for s in PLAN.runs_with("disjoint")})),
    params:
        run=run_dir,
        store=lambda w: f"{RESULTS}/{w.dataset}/store",
        out=lambda w: f"{run_dir(w)}/fused_store",
        splits=lambda w: " ".join(fused_splits(spec_of(w).pipeline)),
        device=config["device"],
        batch_size=config["evaluation"]["batch_size"],
    threads: config["threads_per_job"]
    resources:
        gpu=1,
    log:
        f"{RESULTS}/logs/{{dataset}}/{{run}}/seed{{seed}}/fuse.log",
    conda:
        ENV
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/{{run}}/seed{{seed}}/fuse.tsv"
    shell:
        "python -m benchmark fuse-store --run {params.run} --store {params.store} --splits {params.splits} "
        "--out {params.out} --batch-size {params.batch_size} --device {params.device} --threads {threads} "
        "> {log} 2>&1"


# The other pipelines fuse the test split only (the same command; see benchmark.record.fused_splits).
use rule fuse as fuse_test with:
    output:
        f"{RUN_DIR}/fused_store/test.h5",
    wildcard_constraints:
        dataset=r"[A-Za-z0-9_]+",
        run=r"[A-Za-z0-9_\-]+",


ruleorder: fuse > fuse_test


rule train_follower:
    input:
        config=rules.follower_config.output[0],
        store=expand(f"{RUN_DIR}/fused_store/{{split}}.h5", split=["train", "val"], allow_missing=True),
    output:
        model=f"{RUN_DIR}/follower/model.safetensors",
        info=f"{RUN_DIR}/follower/run.json",
        train_log=f"{RUN_DIR}/follower/train_log.csv",
    params:
        store=lambda w: f"{run_dir(w)}/fused_store",
        out=lambda w: f"{run_dir(w)}/follower",
        device=config["device"],
        code=lambda w: PLAN.code_version(None),
    threads: config["threads_per_job"]
    resources:
        gpu=1,
    log:
        f"{RESULTS}/logs/{{dataset}}/{{run}}/seed{{seed}}/train_follower.log",
    conda:
        ENV
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/{{run}}/seed{{seed}}/train_follower.tsv"
    shell:
        "python -m benchmark train-follower --config {input.config} --store {params.store} --out {params.out} "
        "--device {params.device} --threads {threads} > {log} 2>&1"
