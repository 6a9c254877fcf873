# Scores of every run -> Tables 1-3 (CSV, Markdown, LaTeX; beside the paper) and figures.
# `snakemake --report results/report.html` then bundles them with their captions.


def render_inputs(wildcards):
    files = []
    for spec in PLAN.runs:
        run_dir = f"{RESULTS}/{spec.path}"
        scores = "seg_scores.csv" if PLAN.dataset_kind(spec.dataset) == "brats" else "fusion_scores.csv"
        files += [f"{run_dir}/{scores}", f"{run_dir}/examples.npz"]
    return files


rule render:
    input:
        render_inputs,
    output:
        tables=report(
            directory(f"{RESULTS}/tables"),
            patterns=["{name}.md"],
            caption="../report/tables.rst",
            category="Tables",
        ),
        figures=report(
            directory(f"{RESULTS}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    params:
        runs=[f"{RESULTS}/{spec.path}" for spec in PLAN.runs],
    log:
        f"{RESULTS}/logs/render.log",
    shell:
        "python -m benchmark render --out {RESULTS} --runs {params.runs} > {log} 2>&1"
