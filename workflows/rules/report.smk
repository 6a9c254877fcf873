# Scores of every run -> Tables 1-3 (CSV, Markdown, LaTeX; beside the paper) and figures.
# `snakemake --report results/report.html` then bundles them with their captions.


rule render:
    input:
        render_inputs,
    output:
        csv=expand(f"{RESULTS}/tables/{{table}}.csv", table=TABLES),
        tex=expand(f"{RESULTS}/tables/{{table}}.tex", table=TABLES),
        table1=report(f"{RESULTS}/tables/table1_segmentation.md", caption="../report/table1.rst", category="Tables"),
        table2=report(f"{RESULTS}/tables/table2_fusion.md", caption="../report/table2.rst", category="Tables"),
        table3=report(f"{RESULTS}/tables/table3_ablation.md", caption="../report/table3.rst", category="Tables"),
        vs_paper=report(
            expand(f"{RESULTS}/tables/{{table}}_vs_paper.md", table=TABLES),
            caption="../report/tables.rst",
            category="Beside the paper",
        ),
        vs_paper_csv=expand(f"{RESULTS}/tables/{{table}}_vs_paper.csv", table=TABLES),
        figures=report(
            directory(f"{RESULTS}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    params:
        results=lambda w, output: os.path.dirname(output.figures),
        runs=[f"{RESULTS}/{spec.path}" for spec in PLAN.runs],
        context=as_json(PLAN.render_context()),
    log:
        f"{RESULTS}/logs/render.log",
    conda:
        ENV
    shell:
        "python -m benchmark render --out {params.results} --context {params.context:q} --runs {params.runs} "
        "> {log} 2>&1"
