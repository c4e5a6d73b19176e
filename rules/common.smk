# Input functions, wildcard constraints and small helpers shared by every rule file.
import itertools
import json
from pathlib import Path

from snakemake.exceptions import WorkflowError

from workflow.config import prepare_settings
from workflow.formats import resolve_files
from workflow.runs import (HYBRID, PREFERENCE, TRAINED, block as run_block, config_runs, config_seeds, grid_point,
                           parse as parse_run, run_seed, wildcard_pattern)
from workflow.transfer import transfers

RESULTS = config["results"]
# Rules that ask the scheduler for GPUs (llm.gpu > 0) run in the CUDA environment under --sdm conda.
LLM_ENV = "../envs/gpu.yaml" if config["llm"]["gpu"] else "../envs/cpu.yaml"
# GPUs of the data-parallel stages (training, evaluation: one process per GPU) and of the
# single-process GPU stages (scoring, self-distillation, effort)
LLM_GPUS = config["llm"]["gpu"]
ONE_GPU = min(LLM_GPUS, 1)
# GPU stages start through workflow.launch: it claims distinct free GPUs for jobs that run side by
# side on one node (unless the scheduler set CUDA_VISIBLE_DEVICES) and starts torchrun for llm.gpu > 1
LAUNCH = f"python -m workflow.launch --gpus {LLM_GPUS} --" if LLM_GPUS else "python -m"
LAUNCH_ONE = f"python -m workflow.launch --gpus {ONE_GPU} --" if ONE_GPU else "python -m"
DATASETS = list(config["datasets"])

# Threads of the compute rules (`threads: JOB_THREADS`): up to workflow.cores, i.e. --cores. Commands that run
# no job take no --cores, and workflow.cores fails there (`snakemake --report`, --summary:
# snakemake/snakemake#3691); they count 1.
try:
    CORES = workflow.cores
except WorkflowError:
    CORES = 1
# ... and `threads_per_job` caps them: several small jobs at once beat one job on every core on a
# small CPU (config/config.yaml).
JOB_THREADS = CORES if config["threads_per_job"] == "all" else min(int(config["threads_per_job"]), CORES)


wildcard_constraints:
    dataset="|".join(DATASETS) if DATASETS else "[^/]+",
    split="valid|test",


def job_resources(name, mem, runtime, gpus=0):
    """The resources of one rule, for the scheduler. Its own host memory and runtime (sized for the embedded
    default), `resources.llm` for the rules that load the LLM (those with GPUs when llm.gpu > 0;
    `gpus` of them), then `resources.rules.<rule>` (config keys, config/schema.yaml)."""
    out = {"mem": mem, "runtime": runtime}
    if gpus or name in LLM_RULES:
        out |= {k: v for k, v in config["resources"]["llm"].items() if v is not None}
        out["gpu"] = gpus
    return out | config["resources"]["rules"].get(name, {})


# the rules that load the LLM (they take `resources.llm` even on a CPU-only config)
LLM_RULES = {"title_embeddings", "evaluate_base", "evaluate", "evaluate_transfer", "explain", "sft", "hybrid",
             "reference_logprobs", "preference", "gates", "effort_scores", "self_distill", "soft"}


def preflight_flag(wildcards):
    """The GPU preflight's record as an input of the base model, so a GPU config stops before any
    work when CUDA is missing or unusable (rule preflight); nothing on a CPU config."""
    return f"{RESULTS}/preflight/gpu.json" if LLM_GPUS else []


def spec(obj):
    """A config slice as one JSON string, passed to `python -m workflow.<stage> --spec`."""
    return json.dumps(obj, sort_keys=True)


def dataset_spec(wildcards):
    return spec({"name": wildcards.dataset, **config["datasets"][wildcards.dataset]})


def prepare_spec(wildcards):
    return spec(prepare_settings(config, wildcards.dataset))


def raw_inputs(wildcards):
    """The two raw files a dataset is read from, so that Snakemake reruns ingestion when they
    change. A missing folder or file yields no input here; the ingest job then reports it with the
    dataset's name and the file names it expects."""
    try:
        return [str(p) for p in resolve_files({"name": wildcards.dataset, **config["datasets"][wildcards.dataset]})]
    except ValueError:
        return []


def domain(wildcards):
    return config["datasets"][wildcards.dataset].get("domain") or "item"


# ---------------------------------------------------------------------------------------------
# LLM runs: named {method}-{prompt}[-k..][-e..][-n..][-s..] (workflow/runs.py); the `run` wildcard.

# The `run` wildcard of each kind of rule, from the one run-name grammar (workflow/runs.py).
RUN_PATTERN = {"base": wildcard_pattern(["base"]), "sft": wildcard_pattern(["sft"]),
               "preference": wildcard_pattern(PREFERENCE), "hybrid": wildcard_pattern(HYBRID),
               "soft": wildcard_pattern(["soft"])}
TRAINED_RUN_PATTERN = wildcard_pattern(TRAINED)
SELECTIONS = config["selection"]["strategies"]
RUNS = config_runs(config)
TRAINED_RUNS = [r for r in RUNS if r.method != "base"]
# Training seeds (config `seeds`; workflow/runs.py): every trained run of `methods` once per seed.
# Showcases (explanations, iLoRA's gates) are of the first seed's runs only.
SEEDS = config_seeds(config)
SHOWCASE_RUNS = [r for r in TRAINED_RUNS if run_seed(r, config) == SEEDS[0]]


def training_seed(wildcards):
    """The `--seed` of a run's training stages: its -s, else the config's `seed`."""
    return run_seed(parse_run(wildcards.run), config)


def training_selection(wildcards):
    """The selection a run trains on. `random` is drawn once per training seed (`random-s43.parquet`,
    rule select_random_at_seed; the config seed's is `random.parquet`); `all` and the DEALRec selections are seed-independent (a
    DEALRec run's -n re-runs its coverage sampling with the run's seed)."""
    seed = parse_run(wildcards.run).seed
    name = f"{wildcards.selection}-s{seed}" if wildcards.selection == "random" and seed is not None else wildcards.selection
    return f"{RESULTS}/{wildcards.dataset}/selection/{name}.parquet"


def run_spec(wildcards, **blocks):
    """A stage's --spec: the config blocks given, the dataset's domain word and the run's prompt
    and budget (its -n)."""
    run = parse_run(wildcards.run)
    return spec({**blocks, "domain": domain(wildcards), "prompt": run.prompt, "budget": run.budget})


def sft_spec(wildcards):
    return run_spec(wildcards, llm=config["llm"], sft=run_block(parse_run(wildcards.run), config))


def hybrid_spec(wildcards):
    run = parse_run(wildcards.run)
    return run_spec(wildcards, llm=config["llm"], **{run.method: run_block(run, config)})


def hybrid_surrogate(wildcards):
    """The surrogate folder as a named input of a llara or ilora run's evaluation (item embeddings in
    the prompt, the gate's sequence representations); nothing for other runs."""
    if parse_run(wildcards.run).method in HYBRID:
        folder = f"{RESULTS}/{wildcards.dataset}/surrogate"
        return {"item_vectors": f"{folder}/item_embeddings.parquet",
                "sequence_vectors": f"{folder}/sequence_repr.parquet"}
    return {}


def surrogate_args(wildcards, input):
    """`--surrogate FOLDER` for a llara or ilora run (see hybrid_surrogate), else nothing."""
    return ["--surrogate", str(Path(input.item_vectors).parent)] if "item_vectors" in input.keys() else []


def preference_spec(wildcards):
    return run_spec(wildcards, llm=config["llm"], preference=config["preference"],
                    method=run_block(parse_run(wildcards.run), config))


def reference_spec(wildcards):
    """What the reference log-probs depend on: the prompts (llm, domain, prompt), budget and batch."""
    return run_spec(wildcards, llm=config["llm"], evaluation={"batch_size": config["evaluation"]["batch_size"]})


def sft_adapter(wildcards):
    """The adapter a preference run starts from: the sft run of its prompt and budget."""
    sft = parse_run(wildcards.run).sft().name
    return f"{RESULTS}/{wildcards.dataset}/llm/{sft}/{wildcards.selection}/adapter"


def sft_reference_logprobs(wildcards):
    sft = parse_run(wildcards.run).sft().name
    return f"{RESULTS}/{wildcards.dataset}/llm/{sft}/{wildcards.selection}/reference_logprobs.parquet"


def run_protocols(run, split):
    """Protocols a run is evaluated with on a split: `evaluation.protocols` for a run of `methods`
    on one of `evaluation.splits`; otherwise (a study's run, or a study's split) the union of the
    studies' protocols on that split. Only those the run's prompt supports."""
    if run.name in {r.name for r in RUNS} and split in config["evaluation"]["splits"]:
        wanted = config["evaluation"]["protocols"]
    else:
        wanted = [p for study in config["studies"].values() if study["split"] == split for p in study["protocols"]]
    return run.protocols(list(dict.fromkeys(wanted)) or ["likelihood"])


def evaluation_spec(wildcards):
    """The evaluation of one run on one split (see run_protocols)."""
    run = parse_run(wildcards.run)
    evaluation = {**config["evaluation"], "splits": [wildcards.split], "protocols": run_protocols(run, wildcards.split)}
    return run_spec(wildcards, llm=config["llm"], evaluation=evaluation)


def explanation_spec(wildcards):
    """The config blocks the explanation stage reads (the test split's predictions, batch size)."""
    return run_spec(wildcards, llm=config["llm"], evaluation={**config["evaluation"], "splits": ["test"]},
                    explanations=config["explanations"])


def explanation_reference(wildcards):
    """The reference model's adapter as a named input: the sft run a preference run started from (a
    SOFT run self-distilled from); none for sft, whose reference is the base model."""
    run = parse_run(wildcards.run)
    if run.method == "sft":
        return {}
    return {"reference": sft_adapter(wildcards)}


def reference_adapter_args(wildcards, input):
    """`--reference-adapter PATH` when the run has a reference adapter, else nothing."""
    return ["--reference-adapter", input.reference] if "reference" in input.keys() else []


def run_selections(run):
    """The selections a run of `methods` trains on: every strategy for the runs (or bare methods)
    `selection.compare_methods` names (all when it is null), the first strategy for the others;
    `none` for the untuned model."""
    if run.method == "base":
        return ["none"]
    compared = config["selection"].get("compare_methods")
    if compared is None or run._replace(seed=None).name in compared or run.method in compared:
        return SELECTIONS
    return SELECTIONS[:1]


def method_runs():
    """(run name, selection) pairs the config asks for."""
    return [(r.name, s) for r in RUNS for s in run_selections(r)]


def run_metrics(dataset, run, selection, split="test"):
    return f"{RESULTS}/{dataset}/llm/{run}/{selection}/{split}/metrics.parquet"


def summary_metrics(wildcards):
    """Every per-sample metrics table: the baselines', the surrogate's, each LLM run's and each
    transferred run's (test split)."""
    return ([f"{RESULTS}/{d}/baselines/metrics.parquet" for d in DATASETS]
            + [f"{RESULTS}/{d}/surrogate/metrics.parquet" for d in DATASETS]
            + [run_metrics(d, r, s) for d in DATASETS for r, s in method_runs()] + transfer_targets())


# Cross-domain transfer (rules/transfer.smk, workflow/transfer.py): a run's adapter trained on dataset
# `from` evaluated on dataset `to`; the config's `transfer` list, checked here (errors name the entry).
try:
    TRANSFERS = transfers(config)
except ValueError as exc:
    raise WorkflowError(str(exc)) from exc
TRANSFER_RUN_PATTERN = wildcard_pattern(["sft", *PREFERENCE, "soft"])


def transfer_metrics(dataset, trained_on, run, selection, split="test"):
    return f"{RESULTS}/{dataset}/transfer/{trained_on}/{run}/{selection}/{split}/metrics.parquet"


def transfer_targets():
    """The test metrics of every transferred run, on each selection it trains on."""
    return [transfer_metrics(t.dataset, t.trained_on, t.run.name, s) for t in TRANSFERS for s in run_selections(t.run)]


def data_targets():
    return expand(f"{RESULTS}/{{dataset}}/data/samples.parquet", dataset=DATASETS)


def surrogate_targets():
    return expand(f"{RESULTS}/{{dataset}}/surrogate/metrics.parquet", dataset=DATASETS)


def explanation_targets():
    """Explanations of every trained run named by `explanations.methods` (a bare method: each of
    its runs) that `methods` trains, at the first training seed (`showcased`)."""
    wanted = config["explanations"]["methods"]
    return [f"{RESULTS}/{d}/llm/{r.name}/{s}/explanations.{ext}" for d in DATASETS for r in TRAINED_RUNS
            if showcased(r, wanted) for s in run_selections(r) for ext in ("parquet", "html")]


def showcased(run, wanted):
    """Whether a list of runs or bare methods (`explanations.methods`) names the run: by its full
    name, or, at the first training seed, by its name without -s or its bare method."""
    return run.name in wanted or run in SHOWCASE_RUNS and (run._replace(seed=None).name in wanted or run.method in wanted)


# ---------------------------------------------------------------------------------------------
# Studies: a grid of config variants of some methods -> runs -> one table and plot (workflow/study.py)

def study_points(name):
    """(labels, run) of every run of a study: each method at every combination of the grid
    (workflow/runs.py grid_point: a main run is reused, not retrained)."""
    study = config["studies"][name]
    grid = study["grid"]
    if study["x"] not in grid:
        raise WorkflowError(f"config key 'studies.{name}.x': {study['x']!r} is not a key of its grid")
    try:
        points = [grid_point(method, dict(zip(grid, values)), config)
                  for method in study["methods"] for values in itertools.product(*grid.values())]
        if study.get("reference"):
            # the reference method's run at each prompt and budget the grid visits
            shared = {tuple((axis, labels[axis]) for axis in ("prompt", "budget") if axis in grid)
                      for labels, _ in points}
            references = [grid_point(study["reference"], dict(point), config) for point in sorted(shared)]
            points += [({**labels, "reference": True}, run) for labels, run in references]
    except ValueError as exc:
        raise WorkflowError(f"config key 'studies.{name}.grid': {exc}") from exc
    return points


def study_runs(name):
    """(labels, metrics path) of every run of a study, on every dataset and the first selection strategy."""
    split = config["studies"][name]["split"]
    return [({**labels, "dataset": d, "selection": s}, run_metrics(d, run.name, s, split))
            for d in DATASETS for s in SELECTIONS[:1] for labels, run in study_points(name)]


def study_inputs(wildcards):
    """The study's runs and the baselines it draws as lines (popularity, SASRec; per dataset)."""
    return {"runs": [path for _, path in study_runs(wildcards.study)],
            "baselines": [f"{RESULTS}/{d}/baselines/metrics.parquet" for d in DATASETS]
            + [f"{RESULTS}/{d}/surrogate/metrics.parquet" for d in DATASETS]}


def study_spec(wildcards):
    study = config["studies"][wildcards.study]
    runs = [{**labels, "path": path} for labels, path in study_runs(wildcards.study)]
    return spec({"name": wildcards.study, "x": study["x"], "split": study["split"], "protocols": study["protocols"],
                 "metrics": study["metrics"],
                 "bootstrap": config["summary"]["bootstrap"], "ci": config["summary"]["ci"], "runs": runs})


def study_targets():
    return [f"{RESULTS}/studies/{name}.{ext}" for name, study in config["studies"].items() if study["enabled"]
            for ext in ("parquet", "md", "png")]


REPORT = f"{RESULTS}/report"
RESOURCES_FIGURE = f"{REPORT}/resources.png"


def trained_adapters(wildcards):
    """The adapters (with their train_log.parquet) of a dataset's trained runs, for the loss curves."""
    return [f"{RESULTS}/{wildcards.dataset}/llm/{r}/{s}/adapter" for r, s in method_runs() if s != "none"]


def gate_targets():
    """iLoRA's gate showcase of every ilora run of `methods` that has a gate (not `uniform`), at the
    first training seed (SHOWCASE_RUNS)."""
    return [f"{RESULTS}/{d}/llm/{r.name}/{s}/gates.{ext}" for d in DATASETS for r in SHOWCASE_RUNS
            if r.method == "ilora" and run_block(r, config)["gate"] != "uniform"
            for s in run_selections(r) for ext in ("parquet", "png")]


def report_targets():
    """The report's figures and tables (rules/report.smk); the resources figure comes last."""
    targets = [f"{REPORT}/summary.html", f"{REPORT}/metrics"] + gate_targets()
    targets += expand(f"{REPORT}/data/{{dataset}}.{{ext}}", dataset=DATASETS, ext=["html", "png"])
    if TRAINED_RUNS:
        targets += expand(f"{REPORT}/training/{{dataset}}.png", dataset=DATASETS)
    return targets + [RESOURCES_FIGURE]


def report_inputs(wildcards):
    """Every other target: the resources figure waits for all jobs' benchmark records."""
    return [t for t in all_targets() if t != RESOURCES_FIGURE]


def split_targets():
    """The metrics of every run of `methods` on the other splits of `evaluation.splits` (the summary
    reads the test split; a `valid` entry evaluates every run there too, e.g. to choose settings)."""
    return [run_metrics(d, r, s, split) for split in config["evaluation"]["splits"] if split != "test"
            for d in DATASETS for r, s in method_runs()]


def all_targets():
    return (data_targets() + surrogate_targets() + [f"{RESULTS}/summary.parquet", f"{RESULTS}/summary.md"]
            + split_targets() + explanation_targets() + study_targets() + report_targets())


# ---------------------------------------------------------------------------------------------
# DEALRec selections (rules/selection.smk): each score stage gets only its own config slice, so
# changing one (e.g. the LiSSA depth) does not rerun the other.
import shlex


def influence_spec(wildcards):
    return spec({"dealrec": {"influence": config["selection"]["dealrec"]["influence"]}})


def effort_sft_run():
    """With `effort.adapter: sft`: (the sft run, the selection) whose adapter the effort is measured
    on, as the authors measure it on a LoRA trained on the data: the first sft run of `methods` at
    the config seed, on the first strategy that is not DEALRec's. The DEALRec selection (and every
    run trained on it) then waits for that training. None for any other `effort.adapter`."""
    if config["selection"]["dealrec"]["effort"]["adapter"] != "sft":
        return None
    plain = [s for s in SELECTIONS if s not in ("dealrec", "influence", "effort")]
    runs = [r for r in TRAINED_RUNS if r.method == "sft" and run_seed(r, config) == config["seed"]]
    if not plain or not runs:
        raise WorkflowError("config key 'selection.dealrec.effort.adapter': `sft` needs an sft run in `methods` and "
                            "a strategy that is not DEALRec's (random or all) to train it on")
    return runs[0], plain[0]


def effort_adapter(wildcards):
    """The sft adapter of `effort_sft_run` as a named input of the effort scores (nothing otherwise)."""
    found = effort_sft_run()
    if found is None:
        return {}
    return {"adapter": f"{RESULTS}/{wildcards.dataset}/llm/{found[0].name}/{found[1]}/adapter"}


def adapter_args(wildcards, input):
    """`--adapter FOLDER` when the rule has an adapter input, else nothing."""
    return ["--adapter", input.adapter] if "adapter" in input.keys() else []


def effort_spec(wildcards):
    """The LLM the effort is measured on: the base model with the sft block's LoRA and prompt, or
    the trained sft adapter (`effort_sft_run`) under its run's prompt."""
    lora = {k: config["sft"][k] for k in ("lora_r", "lora_alpha", "lora_dropout", "target_modules")}
    found = effort_sft_run()
    prompt = found[0].prompt if found else config["sft"]["prompt"]
    return spec({"llm": config["llm"], "sft": lora, "domain": domain(wildcards), "prompt": prompt,
                 "selection": {"dealrec": {"effort": config["selection"]["dealrec"]["effort"]}}})


def dealrec_spec(wildcards):
    return spec({"dealrec": config["selection"]["dealrec"]})


def dealrec_inputs(wildcards):
    """The samples and the score tables a DEALRec strategy selects from."""
    scores = f"{RESULTS}/{wildcards.dataset}/selection/scores"
    inputs = {"samples": f"{RESULTS}/{wildcards.dataset}/data/samples.parquet"}
    if wildcards.selection in ("dealrec", "influence"):
        inputs["influence"] = f"{scores}/influence.parquet"
    if wildcards.selection in ("dealrec", "effort"):
        inputs["effort"] = f"{scores}/effort.parquet"
    return inputs


def dealrec_score_args(wildcards, input):
    return " ".join(f"--{name} {shlex.quote(input[name])}" for name in ("influence", "effort") if name in input.keys())


# ---------------------------------------------------------------------------------------------
# SOFT (rules/soft.smk): the sft backbone's self-distilled answers, then the SOFT runs on them.

def self_distill_spec(wildcards):
    """What the self-distilled answers depend on (not alpha, epochs or lr: every SOFT run of a
    backbone shares them): the prompts, the beam settings and the generation batch."""
    beams = {key: config["soft"][key] for key in ("num_beams", "max_new_tokens")}
    return run_spec(wildcards, llm=config["llm"], soft=beams,
                    evaluation={"batch_size": config["evaluation"]["batch_size"]})


def soft_spec(wildcards):
    return run_spec(wildcards, llm=config["llm"], soft=run_block(parse_run(wildcards.run), config),
                    evaluation={"batch_size": config["evaluation"]["batch_size"]})


def sft_self_distilled(wildcards):
    """The self-distilled answers a SOFT run trains on: those of the sft run of its prompt and budget."""
    sft = parse_run(wildcards.run).sft().name
    return f"{RESULTS}/{wildcards.dataset}/llm/{sft}/{wildcards.selection}/self_distilled.parquet"
