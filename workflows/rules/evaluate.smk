# Trained runs -> per-patient segmentation scores (BraTS) or per-image fusion scores (paired data), plus the
# example arrays that the figures show. The evaluation settings are parameters, not part of any run: changing
# them re-runs these rules only.


rule evaluate_segmentation:
    input:
        segmenter=segmenter_inputs,
        store=lambda w: store_files(w.dataset, ("test",)),
    output:
        scores=f"{RUN_DIR}/seg_scores.csv",
        settings=f"{RUN_DIR}/seg_scores.json",
        examples=f"{RUN_DIR}/examples.npz",
    wildcard_constraints:
        dataset=one_of(BRATS),
    params:
        store=lambda w: f"{RESULTS}/{w.dataset}/store",
        run=run_dir,
        settings=as_json(PLAN.evaluation()),
        device=config["device"],
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
        "python -m benchmark evaluate --run {params.run} --store {params.store} --settings {params.settings:q} "
        "--device {params.device} --threads {threads} > {log} 2>&1"


use rule evaluate_segmentation as evaluate_fusion with:
    input:
        model=f"{RUN_DIR}/model.safetensors",
        info=f"{RUN_DIR}/run.json",
        fused=f"{RUN_DIR}/fused_store/test.h5",
        store=lambda w: store_files(w.dataset, ("test",)),
    output:
        scores=f"{RUN_DIR}/fusion_scores.csv",
        settings=f"{RUN_DIR}/fusion_scores.json",
        examples=f"{RUN_DIR}/examples.npz",
    wildcard_constraints:
        dataset=one_of(PAIRED),
