# Fuse4Seg benchmark workflow.
#   snakemake --cores all --resources gpu=1                      # synthetic default (workflows/config/default.yaml)
#   snakemake --cores all --resources gpu=1 --configfile workflows/config/paper.yaml
# Rules are thin: each calls `python -m benchmark <command>`; the logic lives in the benchmark package.
import os

from snakemake.utils import min_version

from benchmark.methods import METHOD_DIRS_ENV
from benchmark.workflow import Plan, validate_config

min_version("8.0")


# The synthetic default applies only when no --configfile is given: Snakemake would otherwise merge it
# key by key into the user's file (e.g. the default's datasets would join those of paper.yaml).
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "workflows/config/default.yaml")



config = validate_config(config, os.path.join(workflow.basedir, "workflows/schema/config.schema.yaml"))
if config["method_dirs"]:  # extra method folders: for planning here and for every job (inherited environment)
    os.environ[METHOD_DIRS_ENV] = os.pathsep.join(os.path.abspath(d) for d in config["method_dirs"])
PLAN = Plan(config)
RESULTS = PLAN.results


include: "workflows/rules/common.smk"
include: "workflows/rules/data.smk"
include: "workflows/rules/train.smk"
include: "workflows/rules/evaluate.smk"
include: "workflows/rules/report.smk"


report: "workflows/report/workflow.rst"


rule all:
    input:
        rules.render.output,
    default_target: True
