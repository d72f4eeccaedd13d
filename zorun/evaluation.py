"""Evaluation on dev and test, when dev is evaluated, and which step model selection (budget.select) keeps.

Selection looks at dev only; the test split is evaluated at each newly
selected step and at the end, and summary.json reports both.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from omegaconf import DictConfig

from zorun.stack import Stack
from zorun.tasks import Example, Task
from zorun.tasks.scoring import evaluate_classification, evaluate_generation, evaluate_objective


def evaluate(stack: Stack, task: Task, examples: List[Example], objective: bool,
             progress: Any = None) -> Dict[str, float]:
    """The task's metrics on `examples`; with `objective`, also the training loss there (what dev_loss ranks)."""
    cfg = stack.cfg
    args = (stack.model, stack.tokenizer, examples, cfg.model.max_length, cfg.budget.eval_batch_size, stack.device)
    as_cls = task.trains_on_candidates
    if task.type == "generation":
        result = evaluate_generation(*args, max_new_tokens=cfg.task.max_new_tokens, progress=progress)
    else:
        result = evaluate_classification(*args, progress=progress)
    if objective:  # CE over the candidates is the classification loss already computed
        result["objective"] = result["loss"] if as_cls else evaluate_objective(*args, as_classification=False)
    return result


def evaluates_at(budget: DictConfig, step: int, steps_per_epoch: int, total: int) -> bool:
    """Whether dev is evaluated after `step` steps (before the last): each epoch's end, or budget.eval_every."""
    every = steps_per_epoch if budget.epochs else budget.eval_every
    return bool(every) and step % every == 0 and step < total


def chosen(rule: str, dev: Dict[str, float], selected: Optional[Dict[str, Any]], metric: str, final: bool) -> bool:
    """Whether budget.select=`rule` selects the step evaluated as `dev` over the one `selected` so far. A tie
    keeps the earlier step (HF's load_best_model_at_end, which MeZO uses, does the same)."""
    if rule == "last":
        return final
    if selected is None:
        return True
    if rule == "dev_loss":
        return dev["objective"] < selected["dev"]["objective"]
    return dev[metric] > selected["dev"][metric]
