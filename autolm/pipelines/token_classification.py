"""The token-classification pipeline (alias ner): a label per token, or per word and entity when
aggregated, with the character span of each in the text (offsets from the fast tokenizer)."""

from __future__ import annotations

import torch

from ..errors import GenerationError
from .inputs import forward

STRATEGIES = ("none", "simple", "first", "average", "max")


class TokenClassificationPipeline:
    """Call with a text (or a list). `aggregation_strategy`:
    - "none": one {"entity", "score", "index", "word", "start", "end"} per token;
    - "simple": adjacent tokens with the same tag (B-/I- prefixes) grouped into {"entity_group", ...};
    - "first" / "average" / "max": first the subword tokens of a word agree on one label (the first
      token's, the mean of their scores, or the most confident token's), then words group as "simple".
    Results labelled with one of `ignore_labels` (default ["O"]) are left out, as in transformers."""

    task = "token-classification"

    def __init__(self, model, tokenizer, aggregation_strategy: str = "none", ignore_labels=None, **kwargs):
        self.model = model
        self.tokenizer = tokenizer
        self.defaults = {"aggregation_strategy": aggregation_strategy, "ignore_labels": ignore_labels}

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __call__(self, inputs: str | list[str], **kwargs) -> list:
        strategy = kwargs.pop("aggregation_strategy", self.defaults["aggregation_strategy"])
        strategy = str(getattr(strategy, "value", strategy) or "none").lower()
        if strategy not in STRATEGIES:
            raise GenerationError(f"aggregation_strategy={strategy!r} is not one of {', '.join(STRATEGIES)}.")
        ignore = kwargs.pop("ignore_labels", self.defaults["ignore_labels"])
        ignore = ["O"] if ignore is None else list(ignore)
        if isinstance(inputs, str):
            return self._one(inputs, strategy, ignore)
        return [self._one(text, strategy, ignore) for text in inputs]

    def _one(self, text: str, strategy: str, ignore: list[str]) -> list[dict]:
        if not isinstance(text, str):
            raise GenerationError(f"token-classification inputs are strings, got {type(text).__name__}.")
        encoded = self.tokenizer(
            text,
            return_tensors="pt",
            truncation=bool(self.tokenizer.model_max_length and self.tokenizer.model_max_length > 0),
            return_special_tokens_mask=True,
            return_offsets_mapping=True,
        )
        logits = forward(self.model, encoded).logits[0].float()
        scores = logits.softmax(-1).numpy()
        tokens = self._tokens(text, encoded, scores)
        if strategy == "none":
            entities = [self._labelled(t, t["scores"]) | {"index": t["index"]} for t in tokens]
            entities = [
                {k: e[k] for k in ("entity", "score", "index", "word", "start", "end")} for e in entities
            ]
        else:
            words = tokens if strategy == "simple" else self._words(tokens, strategy)
            labelled = [self._labelled(w, w["scores"]) for w in words]
            entities = self._groups(labelled)
        return [e for e in entities if e.get("entity", e.get("entity_group")) not in ignore]

    def _tokens(self, text: str, encoded, scores) -> list[dict]:
        """Every non-special token: its piece, scores, span in `text` and whether it continues a word."""
        ids = encoded["input_ids"][0].tolist()
        offsets = encoded["offset_mapping"][0].tolist()
        special = encoded["special_tokens_mask"][0].tolist()
        model = self.tokenizer.backend_tokenizer.model
        prefix = getattr(model, "continuing_subword_prefix", None)
        tokens = []
        for i, (id_, (start, end)) in enumerate(zip(ids, offsets)):
            if special[i]:
                continue
            piece = self.tokenizer.convert_ids_to_tokens(id_)
            span = text[start:end]
            if prefix:
                continuing = len(piece) != len(span)  # "##ing" is longer than "ing"
            else:  # no subword marker: a token glued to the previous character continues its word
                continuing = start > 0 and " " not in text[start - 1 : start + 1]
            if id_ == self.tokenizer.unk_token_id:
                piece, continuing = span, False
            tokens.append(
                {
                    "word": piece,
                    "scores": scores[i],
                    "start": start,
                    "end": end,
                    "index": i,
                    "sub": continuing,
                }
            )
        return tokens

    def _labelled(self, token: dict, scores) -> dict:
        best = int(scores.argmax())
        label = self.model.config.id2label[best]
        return {
            "entity": label,
            "score": float(scores[best]),
            **{k: token[k] for k in ("word", "start", "end")},
        }

    def _words(self, tokens: list[dict], strategy: str) -> list[dict]:
        """Merge each word's tokens into one, with the scores `strategy` picks."""
        import numpy as np

        words: list[list[dict]] = []
        for token in tokens:
            if words and token["sub"]:
                words[-1].append(token)
            else:
                words.append([token])
        merged = []
        for group in words:
            if strategy == "first":
                scores = group[0]["scores"]
            elif strategy == "max":
                scores = max(group, key=lambda t: t["scores"].max())["scores"]
            else:
                scores = np.nanmean(np.stack([t["scores"] for t in group]), axis=0)
            word = self.tokenizer.convert_tokens_to_string([t["word"] for t in group])
            merged.append(
                {"word": word, "scores": scores, "start": group[0]["start"], "end": group[-1]["end"]}
            )
        return merged

    def _groups(self, entities: list[dict]) -> list[dict]:
        """Adjacent entities with the same tag, a "B-" starting a new one, as {"entity_group", ...}."""
        import numpy as np

        groups: list[list[dict]] = []
        for entity in entities:
            bi, tag = _tag(entity["entity"])
            if groups and bi != "B" and tag == _tag(groups[-1][-1]["entity"])[1]:
                groups[-1].append(entity)
            else:
                groups.append([entity])
        return [
            {
                "entity_group": group[0]["entity"].split("-", 1)[-1],
                "score": float(np.nanmean(np.array([e["score"] for e in group], dtype=np.float32))),
                "word": self.tokenizer.convert_tokens_to_string([e["word"] for e in group]),
                "start": group[0]["start"],
                "end": group[-1]["end"],
            }
            for group in groups
        ]


def _tag(label: str) -> tuple[str, str]:
    """("B" or "I", the tag) of a label; a label without a prefix counts as inside."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label
