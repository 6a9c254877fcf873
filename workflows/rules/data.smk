# Raw folders (or synthetic phantoms written in the real layouts) -> HDF5 slice stores + patient splits.
# A raw folder is tracked by the manifest of its files (path, size, modification time; `raw` below): editing,
# adding or removing a file rebuilds that dataset's stores and nothing else.


rule synthesize:
    output:
        f"{RESULTS}/raw/{{dataset}}/.complete",
    params:
        kind=lambda w: PLAN.dataset_kind(w.dataset),
        options=lambda w: as_json(PLAN.datasets[w.dataset]["synthetic"]),
        root=lambda w: f"{RESULTS}/raw/{w.dataset}",
    log:
        f"{RESULTS}/logs/{{dataset}}/synthesize.log",
    conda:
        ENV
    shell:
        "python -m benchmark synthesize --kind {params.kind} --out {params.root} --force "
        "--options {params.options:q} > {log} 2>&1"


rule preprocess:
    input:
        raw_input,
    output:
        train=f"{RESULTS}/{{dataset}}/store/train.h5",
        val=f"{RESULTS}/{{dataset}}/store/val.h5",
        test=f"{RESULTS}/{{dataset}}/store/test.h5",
        splits=f"{RESULTS}/{{dataset}}/store/splits.json",
    params:
        settings=lambda w: as_json(PLAN.preprocess_settings(w.dataset)),
        raw=lambda w: PLAN.raw_digest(w.dataset),
        out=lambda w: f"{RESULTS}/{w.dataset}/store",
    threads: config["preprocess"]["workers"]
    log:
        f"{RESULTS}/logs/{{dataset}}/preprocess.log",
    conda:
        ENV
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/preprocess.tsv"
    shell:
        "python -m benchmark preprocess --settings {params.settings:q} --out {params.out} "
        "--workers {threads} > {log} 2>&1"
