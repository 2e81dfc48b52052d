"""lmms-eval model class for nanovlm checkpoints (needs the `eval` extra: lmms-eval 0.7.3).

    lmms-eval --model nanovlm_lab --model_args pretrained=runs/x/checkpoints/best,batch_size=32 --tasks mmstar
    python -m evals.lmms CKPT --tasks mmstar          # the same, from Python (registers the model itself)

Generation is the native harness's (evals/generation.py): the task's prompt in the LM's chat
template behind the image tokens, batched greedy decoding with the KV cache, replies stripped and
cut at the task's `until` strings. So lmms-eval and `python -m evals.<task>` see the same replies
(compared in tests/test_evals_lmms.py). model_args: pretrained (required), device, batch_size,
max_new_tokens (when the task sets none; default 16, as lmms-eval's own nanovlm), num_workers.
"""

from __future__ import annotations

import logging
from typing import Any

from lmms_eval.api.model import lmms

from evals.generation import Failed, generate
from evals.postprocess import cut_at_stop

log = logging.getLogger(__name__)


class NanoVLMLab(lmms):
    is_simple = True

    def __init__(self, pretrained: str, device: str | None = None, batch_size: int | str | None = 32,
                 max_new_tokens: int | str = 16, num_workers: int | str = 0, max_batch_size: Any = None,
                 **kwargs: Any) -> None:
        super().__init__()
        import torch

        from nanovlm.model.vlm import VisionLanguageModel

        if kwargs:
            log.warning("nanovlm_lab ignores model_args %s", sorted(kwargs))
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = VisionLanguageModel.from_pretrained(pretrained, device=self._device).eval()
        self.pretrained = pretrained
        self.batch_size_per_gpu = int(batch_size or 32)
        self.default_max_new_tokens = int(max_new_tokens)
        self.num_workers = int(num_workers)

    @property
    def device(self) -> Any:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def generate_until(self, requests: list[Any]) -> list[str]:
        """Replies to `requests` (lmms-eval Instances), in their order. Requests are grouped by
        their generation settings (one group per task, usually) and each group is generated in
        length-sorted batches."""
        from tqdm.auto import tqdm

        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items(), key=lambda kv: kv[0])), []).append(i)
        replies: list[str] = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="nanovlm_lab", unit="item", disable=self.rank != 0)
        for indices in groups.values():
            settings = dict(requests[indices[0]].args[1])
            if settings.get("do_sample") or float(settings.get("temperature") or 0) > 0:
                log.warning("nanovlm_lab decodes greedily; sampling settings %s are ignored", settings)
            until = settings.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            questions, images = [], []
            for i in indices:
                context, _, doc_to_visual, doc_id, task, split = requests[i].args
                questions.append(context)
                images.append(doc_to_visual(self.task_dict[task][split][doc_id]) or [])
            outputs = generate(self.model, questions, images, batch_size=self.batch_size_per_gpu,
                               max_new_tokens=int(settings.get("max_new_tokens") or self.default_max_new_tokens),
                               num_workers=self.num_workers, progress=bar)
            for i, out in zip(indices, outputs):
                # lmms-eval has no notion of a failed item: an unreadable image answers "".
                replies[i] = "" if isinstance(out, Failed) else cut_at_stop(out, until)
        bar.close()
        return replies

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        raise NotImplementedError("nanovlm_lab supports generation tasks only (output_type generate_until)")

    def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
        raise NotImplementedError("nanovlm_lab supports single-round generation tasks only")
