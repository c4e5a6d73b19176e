"""rere: GRPO whose group is the policy's own constrained beam over the whole catalogue (ReRe and
MiniOneRec's RL stage), on the one trainer.

Each step, per sample: the policy (the sft adapter, trained) decodes its `group_size` best catalogue
items by the catalogue protocol's beam search (`workflow.llm.catalogue.beam_search`, width =
`group_size`; history items are not excluded, as in MiniOneRec's RL: a history item in the beam is a
wrong answer like any other, and excluded items would take live beams and leave the group short),
each item's answer (its title, or its code ID under an ID prompt, sid or cid) is scored token by
token under the policy (with gradient) and under the reference (the sft adapter as loaded, kept
frozen beside the trained copy as a second PEFT adapter, switched in for a no-grad pass), and
`losses.grpo_catalogue` takes the rewards `losses.catalogue_rewards` gives the beam (1 for the
target, MiniOneRec's rank-shaped penalty on the others where the target is in the beam). A beam
without the target and without the penalty has equal rewards: advantage 0, only the KL term acts.
The reference is online: no reference_logprobs file.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from workflow.llm import losses

log = logging.getLogger(__name__)

REFERENCE = "reference"  # the frozen copy of the start adapter


def attach_with_reference(model, adapter: str | Path):
    """The start adapter loaded trainable (the policy) and again, frozen, as the reference."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    model.load_adapter(str(adapter), adapter_name=REFERENCE, is_trainable=False)
    model.set_adapter("default")
    return model


@contextlib.contextmanager
def reference_adapter(model):
    """The reference adapter active (for a no-grad pass), the policy's again afterwards. PEFT's
    set_adapter marks the active adapter's weights trainable and the others frozen, so the policy's
    flags are as before once it returns."""
    model.set_adapter(REFERENCE)
    try:
        yield model
    finally:
        model.set_adapter("default")


def save_policy(model):
    """save_weights for the stage: the policy adapter only, as a preference run saves its adapter."""
    def save(folder: Path) -> None:
        if REFERENCE in model.peft_config:
            model.delete_adapter(REFERENCE)
        model.save_pretrained(folder, safe_serialization=True, save_embedding_layers=False)

    return save


def catalogue_examples(examples: Sequence[dict[str, Any]], item_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Per preference example: its prompt and the catalogue position of its target."""
    position = {item: i for i, item in enumerate(item_ids)}
    return [{"sample_id": e["sample_id"], "prompt": e["prompt"], "target": position[e["candidates"][e["target"]]]}
            for e in examples]


def collate(examples: Sequence[dict[str, Any]]):
    return [e["prompt"] for e in examples], torch.tensor([e["target"] for e in examples])


def make_loss_fn(cfg: dict[str, Any], answers: Sequence[Sequence[int]], pad_id: int, autocast=None):
    """loss_fn(model, batch) of GRPO over the catalogue beam (module docstring); `answers`: every
    catalogue item's answer token ids, in catalogue order."""
    from workflow.llm.catalogue import beam_search, catalogue_trie
    from workflow.llm.scoring import token_logprobs

    trie = catalogue_trie(answers)
    size = int(cfg["group_size"])

    def loss_fn(model, batch):
        prompts, targets = batch
        was_training = model.training
        model.eval()  # the beam is the policy's greedy-most group, dropout off
        ranked = beam_search(model, prompts, trie, width=size, top=size, pad_id=pad_id, batch_size=len(prompts),
                             autocast=autocast)
        model.train(was_training)
        # a catalogue smaller than the group leaves a beam short: the batch's groups shrink to the
        # fewest found (one group size per batch, as the scorer and the advantages need)
        found = min(len(items) for items in ranked.items)
        if found < 2:
            raise ValueError(f"rere: a beam found {found} item(s); a group needs 2")
        items = torch.tensor([items[:found] for items in ranked.items])
        groups = [[answers[i] for i in row] for row in items.tolist()]
        rewards = losses.catalogue_rewards(items == targets[:, None], rank_penalty=bool(cfg["rank_penalty"]))
        policy, mask = token_logprobs(model, prompts, groups)
        with torch.no_grad(), reference_adapter(model):
            reference, _ = token_logprobs(model, prompts, groups)
        loss, diagnostics = losses.grpo_catalogue(policy.float(), reference.float(), mask, rewards.to(policy.device),
                                                  kl_coef=float(cfg["kl_coef"]), eps=float(cfg["eps"]))
        tokens = sum(len(p) + sum(len(a) for a in g) for p, g in zip(prompts, groups))
        return loss, len(prompts), {**diagnostics, "tokens": tokens}

    return loss_fn
