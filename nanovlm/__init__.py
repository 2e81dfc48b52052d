"""nanovlm: the model, data and training library of nanovlm-lab.

Importing it registers nanovlm checkpoints with transformers' Auto classes (`nanovlm.model.auto`), so
`AutoModelForImageTextToText.from_pretrained(ckpt)` and `AutoProcessor.from_pretrained(ckpt)` work.
"""

from nanovlm.model.auto import register_auto_classes

register_auto_classes()
