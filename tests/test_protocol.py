"""MeZO's protocol, choice by choice: each test fails on the behaviour zorun had before it matched MeZO's code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from zorun.paths import CONF_DIR
from zorun.preflight import job_overrides, preflight
from zorun.config import validate
from zorun.errors import ZorunError
from zorun.models import fit, loading
from zorun.models.tokenizer import build_tiny_tokenizer
from zorun.sweep.report import build_report
from zorun.run import Run
from zorun.tasks import build_task
from zorun.tasks.base import Example
from zorun.tasks.icl import SEPARATOR
from zorun.tasks.metrics import squad_f1, squad_scores
from zorun.tasks.scoring import encode, greedy_generate, lm_loss, stop_token_ids, tokenize


# ------------------------------------------------------------------ point 7
def test_prompts_lose_leading_whitespace_as_mezo_lstrips_them():
    tok = build_tiny_tokenizer()
    plain = Example("great river It was", candidates=[" great", " bad"], label=0)
    padded = Example("\n\t great river It was", candidates=[" great", " bad"], label=0)
    assert tokenize(tok, padded, 64) == tokenize(tok, plain, 64)


def test_f1_of_two_empty_answers_is_zero_as_the_official_squad_v1_script():
    assert squad_f1("", "") == 0.0 and squad_f1("the", "a") == 0.0  # both normalise to nothing
    assert squad_scores("", [""]) == (0.0, 1.0)  # exact match still holds, as in the script


class Scripted:
    """A model whose greedy continuation is fixed text; records the generate() arguments."""

    def __init__(self, tok, text):
        self.ids = tok(text, add_special_tokens=False)["input_ids"]

    def generate(self, input_ids, **kwargs):
        self.kwargs = kwargs
        tail = torch.tensor([self.ids] * input_ids.shape[0])
        return torch.cat([input_ids, tail], dim=1)


def test_generation_stops_on_the_newline_token_or_eos_and_keeps_the_text_whole():
    tok = build_tiny_tokenizer()
    model = Scripted(tok, " Paris\n\nFrance ")
    assert greedy_generate(model, tok, ["Where?"], 64, 8, "cpu") == ["Paris\n\nFrance"]
    newline = tok("\n", add_special_tokens=False)["input_ids"][-1]
    assert model.kwargs["eos_token_id"] == stop_token_ids(tok) == [newline, tok.eos_token_id]
    assert "stop_strings" not in model.kwargs  # any newline-holding token no longer stops it


# ------------------------------------------------------------------ points 1 and 6
def make_run(tmp_path, *overrides) -> Run:
    """A set-up Run on the synthetic task (32 train, 8 dev, 8 test)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["task.num_train=32", "task.num_dev=8", "task.num_test=8", "budget=smoke",
                                           "logger.progress=false", *overrides])
    run = Run(cfg, str(tmp_path))
    run.setup()
    return run


def scripted(run: Run, dev_losses):
    """evaluate() replaced: dev gives the next scripted objective (accuracy falls as it does); test the step."""
    calls, losses = [], iter(dev_losses)

    def evaluate(split):
        calls.append((split, run.step))
        if split == "dev":
            loss = next(losses)
            return {"accuracy": loss, "objective": loss}
        return {"accuracy": run.step / 100}

    run.evaluate = evaluate
    return calls


def test_the_reported_test_is_the_one_at_the_lowest_dev_loss(tmp_path):
    """MeZO reloads the checkpoint with the best dev loss and reports test there, not at the last step."""
    run = make_run(tmp_path, "budget.steps=6", "budget.eval_every=2")
    assert run.cfg.budget.select.value == "dev_loss"  # the default
    calls = scripted(run, [0.1, 0.9, 0.4, 0.6])  # before training (not a candidate), steps 2, 4, 6
    run.train()
    assert calls == [("dev", 0), ("dev", 2), ("test", 2), ("dev", 4), ("test", 4), ("dev", 6), ("test", 6)]
    summary = run.cleanup()
    assert summary["selected"] == {"by": "dev_loss", "step": 4, "dev": {"accuracy": 0.4, "objective": 0.4},
                                   "test": {"accuracy": 0.04}}
    assert summary["test"] == {"accuracy": 0.06}  # the final step's, next to it


def test_select_last_and_dev_metric(tmp_path):
    run = make_run(tmp_path / "last", "budget.steps=4", "budget.eval_every=2", "budget.select=last")
    calls = scripted(run, [0.5, 0.1, 0.9])
    run.train()
    assert calls == [("dev", 0), ("dev", 2), ("dev", 4), ("test", 4)]  # test once, at the end
    assert run.selected["step"] == 4
    run = make_run(tmp_path / "metric", "budget.steps=4", "budget.eval_every=2", "budget.select=dev_metric")
    scripted(run, [0.5, 0.9, 0.1])
    run.train()
    assert run.selected["step"] == 2 and run.selected["test"] == {"accuracy": 0.02}


def test_dev_objective_is_the_training_loss_on_dev(tmp_path):
    """What dev_loss ranks: CE over candidates for classification, the LM loss of the answer otherwise."""
    run = make_run(tmp_path / "cls", "budget.steps=0")
    dev = run.evaluate("dev")
    assert dev["objective"] == dev["loss"]
    run = make_run(tmp_path / "lm", "budget.steps=0", "task.train_as_classification=false")
    dev = run.evaluate("dev")
    enc = encode(run.stack.tokenizer, run.task.dev, run.cfg.model.max_length, gold_only=True)
    with torch.no_grad():
        assert dev["objective"] == pytest.approx(float(lm_loss(run.stack.model, enc)), rel=1e-5)
    assert "objective" not in run.evaluate("test")


def test_epochs_set_the_step_count_and_the_linear_decay_reaches_zero(tmp_path):
    """MeZO's FT: whole epochs, dev at each epoch's end, lr decayed linearly to 0 over all steps, clip 1.0."""
    run = make_run(tmp_path, "estimator=fo-adam", "estimator.lr=1e-3", "estimator.schedule=linear",
                   "estimator.max_grad_norm=1.0", "budget.epochs=3", "budget.steps=1000", "budget.batch_size=8",
                   "budget.eval_every=0", "budget.log_every=1")
    calls = scripted(run, [0.5, 0.4, 0.3, 0.2])
    run.train()
    assert run.step == 12  # 3 epochs x 32 examples / batch 8; budget.steps does not count
    assert [c for c in calls if c[0] == "dev"] == [("dev", 0), ("dev", 4), ("dev", 8), ("dev", 12)]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if "lr" in r]
    assert lrs == pytest.approx([1e-3 * (12 - t) / 12 for t in range(12)])  # HF's linear schedule, no warm-up


def test_report_cells_show_the_test_at_the_selected_step_and_pool_data_seeds(tmp_path):
    """A grid cell is the selected step's test (not the final one); task.seed draws pool like run seeds."""
    from tests.test_report import make_job, summary_for

    for task_seed, (selected, final) in enumerate([(0.80, 0.60), (0.70, 0.50)]):
        summary = summary_for(0.7, final, 0, "uniform")
        summary["selected"] = {"by": "dev_loss", "step": 4, "dev": {"accuracy": 0.7, "objective": 0.3},
                               "test": {"accuracy": selected}}
        make_job(tmp_path, f"task.seed={task_seed}", [f"task.seed={task_seed}"], summary)
    report = build_report(tmp_path)
    cell = report.cells[("tiny", "synthetic")]["mezo"]
    assert (cell.n, cell.mean, cell.label) == (2, pytest.approx(0.75), "")
    assert "at the step each run selected on dev" in report.markdown()
    columns, rows = report.job_rows()
    row = dict(zip(columns, rows[0]))
    assert (row["selected_step"], row["test_accuracy"], row["final_test_accuracy"], row["task_seed"]) == (4, 0.8, 0.6, 0)


# ------------------------------------------------------------------ point 3
def sst2_files(tmp_path, n_train=40, n_val=6):
    rows = [{"sentence": f"film {i} was {'great' if i % 2 else 'awful'}", "label": i % 2, "idx": i}
            for i in range(n_train + n_val)]
    for name, part in (("train", rows[:n_train]), ("val", rows[n_train:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return [f"task.data_files.train={tmp_path / 'train.jsonl'}", f"task.data_files.validation={tmp_path / 'val.jsonl'}"]


def sst2_task(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["task=sst2", *sst2_files(tmp_path), "task.num_train=8", "task.num_dev=4",
                                           "task.icl_demos=3", *overrides])
    validate(cfg)
    return build_task(cfg.task)


def demo_ids(ex: Example):
    return [int(part.split()[1]) for part in ex.prompt.split(SEPARATOR)[:-1]]


def test_icl_gives_each_test_example_its_own_demonstrations_as_mezo_draws_them(tmp_path):
    """MeZO's icl.sh: per-example seeds from RandomState(0), each the first N of a permutation of the whole
    training split (40 records here, not only the 8 training examples)."""
    task = sst2_task(tmp_path)
    seeds = np.random.RandomState(0).randint(0, 10000, len(task.test))
    expected = [np.random.RandomState(s).permutation(40)[:3].tolist() for s in seeds]
    assert [demo_ids(ex) for ex in task.test] == expected
    assert demo_ids(task.test[0]) != demo_ids(task.test[1])
    assert [ex.prompt for ex in sst2_task(tmp_path).test] == [ex.prompt for ex in task.test]  # reproducible
    dev_ids = [int(ex.prompt.split(SEPARATOR)[-1].split()[1]) for ex in task.dev]
    assert all(own not in demo_ids(ex) for own, ex in zip(dev_ids, task.dev))  # never its own answer
    assert all(ex.prompt.count(SEPARATOR) == 0 for ex in task.train)  # training examples never get demonstrations


def test_fixed_icl_shows_the_first_training_examples_to_every_prompt(tmp_path):
    task = sst2_task(tmp_path, "task.icl_sampling=fixed")
    first = [int(ex.prompt.split()[1]) for ex in task.train[:3]]
    assert all(demo_ids(ex) == first for ex in task.test + task.dev)


# ------------------------------------------------------------------ point 4
def opt_like_tokenizer():
    """OPT's special ids (<s> 0, <pad> 1, </s> 2) and its habit of putting </s> first."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "It": 4, "was": 5, "great": 6}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    backend.post_processor = TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def test_opt_prompts_start_with_mezos_bos_id_0(monkeypatch):
    assert opt_like_tokenizer()("It was great")["input_ids"] == [2, 4, 5, 6]  # what OPT's tokenizer feeds
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["model=opt-13b"])
    assert cfg.model.bos_token_id == 0
    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", lambda *a, **k: opt_like_tokenizer())
    tok = loading.load_tokenizer(cfg.model)
    assert tok("It was great")["input_ids"] == [0, 4, 5, 6] and tok.bos_token_id == 0
    ex = Example("It was", candidates=[" great"], label=0)
    assert tokenize(tok, ex, 3)[0] == [0, 5]  # truncation keeps the new BOS in front
    cfg.model.bos_token_id = None  # the option off: the tokenizer's own BOS
    assert loading.load_tokenizer(cfg.model)("It was")["input_ids"][0] == 2


def test_ft_mixed_precision_float16_trains_float32_weights_with_loss_scaling(tmp_path):
    """MeZO's FT rows run the HF Trainer with --fp16: autocast passes over fp32 weights, a GradScaler."""
    run = make_run(tmp_path, "estimator=fo-adam", "estimator.lr=1e-3", "estimator.mixed_precision=float16",
                   "budget.steps=3")
    before = [b.tensor.detach().clone() for b in run.stack.space.blocks]
    run.train()
    assert run.cleanup()["status"] == "completed" and run.step == 3
    assert run.stack.estimator.scaler is not None and "scaler" in run.stack.estimator.state_dict()
    assert all(b.tensor.dtype == torch.float32 for b in run.stack.space.blocks)
    assert any(not torch.equal(b.tensor, t) for b, t in zip(run.stack.space.blocks, before))
    with pytest.raises(ZorunError, match="set model.dtype=float32"):
        make_run(tmp_path / "bf16", "estimator=fo-adam", "estimator.mixed_precision=float16", "model.dtype=bfloat16")


# ------------------------------------------------------------------ points 2, 6 and 7: the table sweeps
def compose_cfg(*overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def sweep_jobs(name):
    """The override list of every job of sweeps/NAME.yaml, as `zorun -m +sweep=NAME` launches them."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return job_overrides([f"+sweep={name}"], True,
                             lambda o, return_hydra_config=False: compose("config", overrides=list(o),
                                                                          return_hydra_config=return_hydra_config))


@pytest.mark.parametrize("part, dtype, peft, lrs, eps", [
    ("prompt", "float16", "none", None, None),
    ("mezo", "float16", "none", {1e-6, 1e-7}, 1e-3),
    ("lora", "float16", "lora", {1e-4, 5e-5}, 1e-2),
    ("prefix", "float16", "prefix", {1e-2, 1e-3}, 1e-1),
])
def test_zo_and_icl_table_sweeps_run_opt_in_float16_and_vary_the_data_seed(part, dtype, peft, lrs, eps):
    """mezo.sh and icl.sh load OPT with --load_float16; their SEED is --train_set_seed (zorun's task.seed)."""
    jobs = sweep_jobs(f"mezo-table1-{part}")
    assert len(jobs) == 22 and all("task.seed=0" in job and not any(o.startswith("seed=") for o in job)
                                   for job in jobs)
    cfgs = [compose_cfg(*job) for job in jobs[:2]]
    for cfg in cfgs:
        assert (cfg.model.name, cfg.model.dtype.value, cfg.model.peft.value) == ("opt-13b", dtype, peft)
        assert cfg.seed == 0 and cfg.budget.select.value == "dev_loss"
    if lrs is None:
        assert {c.task.icl_demos for c in cfgs} == {0, 32} and cfgs[0].budget.steps == 0
    else:
        assert {c.estimator.lr for c in cfgs} == lrs and {c.estimator.eps for c in cfgs} == {eps}
        assert (cfgs[0].estimator.name, cfgs[0].budget.steps, cfgs[0].budget.batch_size) == ("mezo", 20000, 16)


def test_ft_table_sweep_follows_finetune_sh():
    """5 epochs at batch 8, --fp16 over float32 weights, linear decay to 0, clip 1.0, best dev loss."""
    jobs = sweep_jobs("mezo-table1-ft")
    assert len(jobs) == 33 and all("task.seed=0" in job for job in jobs)
    cfg = compose_cfg(*jobs[0])
    est, bud = cfg.estimator, cfg.budget
    assert (est.name, est.lr, est.schedule.value, est.warmup_steps, est.max_grad_norm, est.mixed_precision.value) == \
        ("fo-adam", 1e-5, "linear", 0, 1.0, "float16")
    assert (cfg.model.dtype.value, bud.epochs, bud.batch_size, bud.select.value) == ("float32", 5, 8, "dev_loss")


# ------------------------------------------------------------------ point 8
def test_opt_presets_carry_mezos_lr_eps_and_dtype_with_their_source():
    """`zorun model=opt-30b` used tiny's lr 2e-4 in float32; MeZO's README runs 1e-7/1e-3 in float16."""
    cfg = compose_cfg("model=opt-30b", "task=sst2", "sampler=adalezo")
    assert (cfg.estimator.lr, cfg.estimator.eps, cfg.model.dtype.value) == (1e-7, 1e-3, "float16")
    assert cfg.defaults_from.estimator.lr.startswith("recipe mezo/opt-30b: MeZO large_models/README.md")
    assert "--load_float16" in cfg.defaults_from.model.dtype
    for peft, lr, eps in (("lora", 5e-5, 1e-2), ("prefix", 1e-3, 1e-1)):  # the README's LoRA and prefix values
        cfg = compose_cfg("model=opt-30b", f"model.peft={peft}")
        assert (cfg.estimator.lr, cfg.estimator.eps) == (lr, eps)
    cfg = compose_cfg("model=opt-30b", "estimator.lr=1e-6", "model.dtype=bfloat16")  # an explicit value wins
    assert (cfg.estimator.lr, cfg.model.dtype.value) == (1e-6, "bfloat16")
    assert cfg.defaults_from.estimator.lr.startswith("override: 1e-06 replaces the recipe's 1e-07")
    assert cfg.defaults_from.model.dtype.startswith("override: bfloat16 replaces the recipe's float16")
    ft = compose_cfg("model=opt-13b", "estimator=fo-adam")
    assert (ft.estimator.lr, ft.estimator.schedule.value, ft.estimator.max_grad_norm,
            ft.estimator.mixed_precision.value, ft.model.dtype.value) == (1e-5, "linear", 1.0, "float16", "float32")
    tiny = compose_cfg()
    assert (tiny.estimator.lr, tiny.model.dtype.value, dict(tiny.defaults_from)) == (2e-4, "float32", {})
    llama = compose_cfg("model=llama-3.1-8b")
    assert (llama.estimator.lr, llama.model.dtype.value) == (1e-7, "bfloat16")
    assert "untuned for Llama 3.1 8B" in llama.defaults_from.estimator.lr


def test_cfg_job_prints_the_recipe_values_without_the_memory_check():
    """The issue's acceptance line, on a machine that cannot hold OPT-30B: the config prints, resolved."""
    proc = subprocess.run([sys.executable, "-m", "zorun", "--cfg", "job", "model=opt-30b"], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "\n  lr: 1.0e-07\n" in proc.stdout and "\n  dtype: float16\n" in proc.stdout
    assert "recipe mezo/opt-30b: MeZO large_models/README.md" in proc.stdout


def test_smollm2_recipes_are_the_grid_choices():
    """SmolLM2-135M's lr/eps per mode come from zorun's own grid (sweeps/real-grid.yaml, docs/real-model.md)."""
    expect = {"mezo": {"none": (1e-4, 1e-3), "lora": (3e-3, 1e-2), "prefix": (3e-2, 1e-1)},
              "zo-adam": {"none": (1e-4, 1e-3), "lora": (3e-3, 1e-2)}}
    for estimator, modes in expect.items():
        for peft, values in modes.items():
            cfg = compose_cfg("model=smollm2-135m", f"estimator={estimator}", f"model.peft={peft}")
            assert (cfg.estimator.lr, cfg.estimator.eps) == values, (estimator, peft)
            assert "zorun grid on task=vader" in cfg.defaults_from.estimator.lr


def test_every_paper_model_has_a_documented_recipe():
    """Every preset of a paper's model (all but tiny and SmolLM2) has MeZO's values; FT's for OPT."""
    models = {p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml")} - {"tiny", "smollm2-135m"}
    recipes = Path(CONF_DIR) / "recipe"
    assert models <= {p.stem for p in (recipes / "mezo").glob("*.yaml")}
    assert {m for m in models if m.startswith("opt-")} <= {p.stem for p in (recipes / "fo-adam").glob("*.yaml")}
    for path in recipes.glob("*/*.yaml"):
        text = path.read_text()
        assert "\n# Source: " in text and "\n# Example: zorun " in text and "defaults_from:" in text, path


def test_the_memory_check_runs_in_the_preflight_before_the_run_directory_exists(tmp_path, monkeypatch):
    monkeypatch.setattr(fit, "free_bytes", lambda model: (24 * fit.GIB, "this machine's RAM"))
    with pytest.raises(ZorunError, match=r"^model=opt-30b needs at least 55\.8 GiB"):
        preflight(["model=opt-30b", "model.init=random", f"hydra.run.dir={tmp_path / 'run'}"], False)
    assert not (tmp_path / "run").exists()
    assert preflight(["model=opt-125m", "model.init=random", f"hydra.run.dir={tmp_path / 'run'}"], False) == 1


def test_a_model_that_cannot_fit_is_refused_before_loading(tmp_path, monkeypatch):
    """model=opt-30b model.init=random on a 24 GiB CPU box: 30B fp16 weights alone are 60 GB."""
    monkeypatch.setattr(fit, "free_bytes", lambda model: (24 * fit.GIB, "this machine's RAM"))
    monkeypatch.setattr("zorun.stack.load_model", lambda *a: pytest.fail("the model was loaded"))
    run = Run(compose_cfg("model=opt-30b", "model.init=random", "model.tokenizer=builtin", "task.num_train=16",
                          "task.num_dev=4", "task.num_test=4", "logger=none"), str(tmp_path))
    with pytest.raises(ZorunError) as err:
        run.setup()
    message = str(err.value)
    assert message == ("model=opt-30b needs at least 55.8 GiB (29.97B parameters in float16) and this machine's RAM "
                       "has 24.0 GiB free; use a smaller model, model.peft=lora or a machine with more memory")


def test_memory_estimate_counts_weights_and_estimator_state():
    cfg = compose_cfg("model=opt-13b")
    params = fit.parameter_count(cfg.model)
    assert 12.8e9 < params < 12.9e9  # OPT-13B, counted on the meta device
    assert fit.required_bytes(cfg, params) == params * 2  # mezo in fp16 keeps no state
    adam = compose_cfg("model=opt-13b", "estimator=zo-adam", "model.dtype=float32")
    assert fit.required_bytes(adam, 100) == 100 * (4 + 8)  # fp32 weights + two fp32 moments
    lora = compose_cfg("model=opt-13b", "estimator=zo-adam", "model.peft=lora")
    assert fit.required_bytes(lora, 100) == 100 * 4  # an adapter's state is left out
    ft = compose_cfg("model=opt-13b", "estimator=fo-adam", "model.dtype=bfloat16", "estimator.mixed_precision=none")
    assert fit.required_bytes(ft, 100) == 100 * 2 * 4  # weights, gradient and AdamW's two moments, all bf16
    assert fit.parameter_count(compose_cfg("model=tiny").model) > 0
