"""Silence, at their source, the messages the libraries print on every load that tell a person nothing."""

from __future__ import annotations

import logging
import sys
import warnings


def quiet_libraries() -> None:
    """Silence what the libraries print on every load and that tells a person nothing, at its source.

    - the progress bars of diffusers' and transformers' loaders (a tiny load prints six of them);
    - diffusers' "modules ... should be kept in float32: []" (an empty list: nothing is affected);
    - transformers' "requires torchvision ... falling back to the PIL processor" (the PIL one is what we use);
    - diffusers' "No LoRA keys associated to CLIPTextModel..." when the FaceID LoRA (UNet only, by design) loads;
    - transformers' load report for the scorer's text tower, which lists the vision half of the whole CLIP checkpoint
      it is read from as unexpected (kept when a key is missing or mismatched: that would matter);
    - diffusers' "image_encoder is not loaded since `image_encoder_folder=None`..." when a FaceID adapter loads (the
      engine always passes image embeddings, which is what the note recommends);
    - scikit-image's FutureWarning that `estimate` is deprecated, raised inside insightface's face alignment (our
      pinned versions work; the fix belongs to insightface).
    """
    import diffusers.utils.logging as diffusers_logging
    from huggingface_hub.utils import disable_progress_bars

    diffusers_logging.disable_progress_bar()
    # transformers reads this when it is first imported (as its own `disable_progress_bar` would set it): importing
    # transformers here for it cost start-up 0.45 s, and the page needs no transformers model.
    disable_progress_bars()
    if "transformers" in sys.modules:  # imported before us (a script of the user's): tell it directly
        import transformers.utils.logging as transformers_logging

        transformers_logging.disable_progress_bar()

    class _Drop(logging.Filter):
        def __init__(self, *fragments: str) -> None:
            super().__init__()
            self.fragments = fragments

        def filter(self, record: logging.LogRecord) -> bool:
            message = record.getMessage()
            return not any(f in message for f in self.fragments)

    logging.getLogger("diffusers.models.modeling_utils").addFilter(_Drop("should be kept in float32: []"))
    logging.getLogger("transformers.utils.import_utils").addFilter(_Drop("requires torchvision"))
    warnings.filterwarnings("ignore", message="`estimate` is deprecated", category=FutureWarning,
                            module="insightface.utils.face_align")  # fmt: skip
    for name in ("diffusers.loaders.lora_base", "diffusers.loaders.lora_pipeline", "diffusers.loaders.peft"):
        logging.getLogger(name).addFilter(_Drop("No LoRA keys associated to"))

    class _TextTowerReport(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            message = record.getMessage()
            # One tower read from a whole CLIP checkpoint (the scorer's text half; the CLIP ViT-L image encoder of
            # FLUX's XLabs adapter): the other tower's keys are "unexpected", which is the point.
            towers = ("CLIPTextModelWithProjection LOAD REPORT", "CLIPVisionModelWithProjection LOAD REPORT")
            if not any(t in message for t in towers):
                return True
            return "MISSING" in message or "MISMATCH" in message

    logging.getLogger("transformers.modeling_utils").addFilter(_TextTowerReport())
    logging.getLogger("diffusers.loaders.ip_adapter").addFilter(_Drop("image_encoder is not loaded since"))
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up checks log every request


quiet_libraries()
