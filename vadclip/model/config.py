"""Typed configuration with the official VadCLIP defaults per dataset preset.

One :class:`VadConfig` object describes the model, the label space, the
optimisation schedule and the CLIP backbone.  ``VadConfig.from_preset("ucf")`` and
``VadConfig.from_preset("xd")`` reproduce the hyper-parameters of the official code
(nwpu-zxr/VadCLIP, ``ucf_option.py`` / ``xd_option.py``); ``from_preset("custom",
classes=[...])`` builds a configuration for a user label space.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from vadclip.clip.spec import TINY_CLIP, ClipSpec  # noqa: F401  (TINY_CLIP re-exported)
from vadclip.errors import InputError

# (label key as it appears in manifests, text prompt used for the A-branch)
UCF_CLASSES: Tuple[Tuple[str, str], ...] = (
    ("Normal", "normal"),
    ("Abuse", "abuse"),
    ("Arrest", "arrest"),
    ("Arson", "arson"),
    ("Assault", "assault"),
    ("Burglary", "burglary"),
    ("Explosion", "explosion"),
    ("Fighting", "fighting"),
    ("RoadAccidents", "roadAccidents"),
    ("Robbery", "robbery"),
    ("Shooting", "shooting"),
    ("Shoplifting", "shoplifting"),
    ("Stealing", "stealing"),
    ("Vandalism", "vandalism"),
)

XD_CLASSES: Tuple[Tuple[str, str], ...] = (
    ("A", "normal"),
    ("B1", "fighting"),
    ("B2", "shooting"),
    ("B4", "riot"),
    ("B5", "abuse"),
    ("B6", "car accident"),
    ("G", "explosion"),
)


# older spellings, still accepted in config files, checkpoints and flags
PADDING_ALIASES = {"official": "paper"}

PADDING_MODES = {
    # the official code: padded positions go through the windowed transformer, the
    # distance adjacency, the GCN residual convolution and the anomaly-focus visual
    # prompt (only the similarity adjacency is cut to the true length); a snippet's
    # scores depend on how much padding follows it.  The paper's numbers come from this.
    "paper": "padded positions take part as in the official code (reproduces the paper)",
    # padding never changes a real snippet's scores: every stage masks it out
    "masked": "padding is masked out everywhere (scores independent of padding)",
}


# The presets as data: the official hyper-parameters per dataset (nwpu-zxr/VadCLIP,
# ucf_option.py / xd_option.py and their train loops); anything not named here takes
# the VadConfig default.  ``from_preset(name, **overrides)`` starts from a row.
PRESETS: Dict[str, Dict[str, Any]] = {
    "ucf": dict(visual_layers=2, attn_window=8, lr=2e-5, batch_size=64, balanced_batches=True,
                milestones=[4, 8], contrast_weight=1e-1, map_normal_segments=False),
    "xd": dict(label_separator="-", label_placeholders=["0"], visual_layers=1, attn_window=64, lr=1e-5,
               batch_size=96, balanced_batches=False, milestones=[3, 6, 10], contrast_weight=1e-4,
               map_normal_segments=True),
    # a user's label space (classes=[normal, abnormal1, ...]): masked padding (not the paper's recipe)
    "custom": dict(label_separator="-", padding="masked", map_normal_segments=True),
}
PRESET_CLASSES: Dict[str, Tuple[Tuple[str, str], ...]] = {"ucf": UCF_CLASSES, "xd": XD_CLASSES}
PRESET_ALIASES = {"ucf-crime": "ucf", "ucfcrime": "ucf", "xd-violence": "xd", "xdviolence": "xd"}


# configs written before ClipSpec kept the CLIP in three flat fields
_FLAT_CLIP = {"clip_model": "model", "clip_pretrained": "pretrained", "clip_model_kwargs": "kwargs"}


def _fold_flat_clip(d: Dict[str, Any], base: Optional[ClipSpec] = None) -> Dict[str, Any]:
    """``clip_model``/``clip_pretrained``/``clip_model_kwargs`` (older checkpoints,
    config files) into one ``clip``, over ``base``."""
    if not any(k in d for k in _FLAT_CLIP):
        return d
    d = dict(d)
    base = ClipSpec.of(d.pop("clip", base)).to_dict()
    for old, new in _FLAT_CLIP.items():
        if old in d:
            base[new] = d.pop(old)
    d["clip"] = ClipSpec.of(base)
    return d


# what a config saved before these fields existed meant (not defaults): such models were
# trained masked and counted a normal video as one class-0 segment in the mAP
SAVED_BEFORE_THESE_FIELDS = {"padding": "masked", "map_normal_segments": True}


class LabelError(InputError):
    """A video-level label that the configured label space does not know."""


@dataclass(frozen=True)
class LabelRule:
    """How a video-level label string is read: its tokens (split on ``separator`` unless
    the whole label is a class, ``placeholders`` dropped), each one of ``classes``; a label
    is normal when every token is the first class.  The one test of "normal" (training's
    batches, scoring's metrics, the report's false alarms), recorded in a scoring run's
    summary so that a report rebuilt later reads labels as the model did."""
    classes: Tuple[str, ...]
    separator: Optional[str] = None
    placeholders: Tuple[str, ...] = ()

    def tokens(self, label: str) -> List[str]:
        label = str(label).strip()
        if self.separator and self.separator in label and label not in self.classes:
            toks = [t for t in label.split(self.separator) if t]
        else:
            toks = [label]
        return [t for t in toks if t not in self.placeholders]

    def vector(self, label: str) -> np.ndarray:
        """Multi-hot vector over the classes (:class:`LabelError` naming an unknown token)."""
        vec = np.zeros(len(self.classes), dtype=np.float32)
        toks = self.tokens(label)
        if not toks:
            raise LabelError(f"label {label!r} names no class (known: {list(self.classes)})")
        for t in toks:
            try:
                vec[self.classes.index(t)] = 1.0
            except ValueError:
                raise LabelError(
                    f"unknown label {t!r} in {label!r}; known classes: {list(self.classes)}"
                ) from None
        return vec

    def is_normal(self, label: str) -> bool:
        v = self.vector(label)
        return bool(v[0] == 1.0 and v[1:].sum() == 0)

    def to_dict(self) -> Dict[str, Any]:
        return {"classes": list(self.classes), "separator": self.separator, "placeholders": list(self.placeholders)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "LabelRule":
        return cls(tuple(d.get("classes") or ()), d.get("separator"), tuple(d.get("placeholders") or ()))


@dataclass
class VadConfig:
    """Everything that defines a VadCLIP model and its training run."""

    preset: str = "ucf"
    # label space: keys as written in manifests and the prompts fed to CLIP;
    # index 0 must be the normal class.
    class_keys: List[str] = field(default_factory=lambda: [k for k, _ in UCF_CLASSES])
    class_prompts: List[str] = field(default_factory=lambda: [p for _, p in UCF_CLASSES])
    # multi-label separator ("B2-B1-0") and tokens that only fill slots ("0")
    label_separator: Optional[str] = None
    label_placeholders: List[str] = field(default_factory=list)

    # LGT-Adapter / heads
    visual_length: int = 256
    visual_heads: int = 1
    visual_layers: int = 2
    attn_window: int = 8
    prompt_prefix: int = 10
    prompt_postfix: int = 10
    temperature: float = 0.07
    sim_threshold: float = 0.7
    snippet_len: int = 16
    # how padded positions of a [B, visual_length] batch take part (see PADDING_MODES)
    padding: str = "paper"
    # fine-grained mAP ground truth: does a normal video count as one class-0 segment
    # over its whole length?  Official XD-Violence: yes; official UCF-Crime: no (its
    # normal label never matches the class list, so Normal is never counted)
    map_normal_segments: bool = False

    # optimisation
    lr: float = 2e-5
    batch_size: int = 64  # per side (normal / abnormal) when balanced
    balanced_batches: bool = True
    epochs: int = 10
    milestones: List[int] = field(default_factory=lambda: [4, 8])
    lr_gamma: float = 0.1
    contrast_weight: float = 1e-1
    seed: int = 234

    # frozen CLIP backbone (open_clip)
    clip: ClipSpec = field(default_factory=ClipSpec)
    # the provenance of the features the model was trained on (set by training; see
    # vadclip.io.provenance): evaluation and scoring refuse features that do not fit it
    feature_provenance: Optional[Dict[str, Any]] = None

    def __post_init__(self) -> None:
        self.clip = ClipSpec.of(self.clip)
        self.padding = PADDING_ALIASES.get(self.padding, self.padding)
        self.validate()

    # ------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "VadConfig":
        name = PRESET_ALIASES.get(name.lower(), name.lower())
        if name not in PRESETS:
            raise InputError(f"unknown preset {name!r}: use one of {sorted(PRESETS)}")
        if "classes" in overrides and name != "custom":
            raise InputError(f"classes are set by the {name!r} preset; use the 'custom' preset for your own")
        base: Dict[str, Any] = dict(PRESETS[name], preset=name)
        if name == "custom":
            classes = overrides.pop("classes", None)
            if not classes:
                raise InputError("preset 'custom' needs classes=[normal, abnormal1, ...]")
            pairs = [(str(c[0]), str(c[1])) if isinstance(c, (tuple, list)) else (str(c), str(c).replace("_", " "))
                     for c in classes]
        else:
            pairs = PRESET_CLASSES[name]
        base.update(class_keys=[k for k, _ in pairs], class_prompts=[p for _, p in pairs])
        base.update(_fold_flat_clip(overrides))
        return cls(**base)

    # --------------------------------------------------------------- validation
    def validate(self) -> None:
        if len(self.class_keys) != len(self.class_prompts):
            raise InputError("class_keys and class_prompts must have the same length")
        if len(self.class_keys) < 2:
            raise InputError("need at least two classes (normal + one abnormal)")
        if len(set(self.class_keys)) != len(self.class_keys):
            raise InputError(f"duplicate class keys in {self.class_keys}")
        if self.padding not in PADDING_MODES:
            raise InputError(f"padding must be one of {sorted(PADDING_MODES)}, got {self.padding!r}")
        for name in ("visual_length", "visual_heads", "visual_layers", "attn_window", "snippet_len"):
            if int(getattr(self, name)) <= 0:
                raise InputError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def num_classes(self) -> int:
        return len(self.class_keys)

    # ------------------------------------------------------------------- labels
    @property
    def label_rule(self) -> "LabelRule":
        """How this model reads a video-level label (its classes, separator, placeholders)."""
        return LabelRule(tuple(self.class_keys), self.label_separator, tuple(self.label_placeholders))

    def label_tokens(self, label: str) -> List[str]:
        return self.label_rule.tokens(label)

    def label_vector(self, label: str) -> np.ndarray:
        """Multi-hot vector over classes for a video-level label string.

        Raises :class:`LabelError` naming the label when a token is unknown.
        """
        return self.label_rule.vector(label)

    def is_normal(self, label: str) -> bool:
        return self.label_rule.is_normal(label)

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> Dict[str, Any]:
        return dict(dataclasses.asdict(self), clip=self.clip.to_dict())

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "VadConfig":
        d = _fold_flat_clip(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown config fields: {sorted(unknown)}")
        return cls(**{**SAVED_BEFORE_THESE_FIELDS, **d})

    def replace(self, **kw: Any) -> "VadConfig":
        return dataclasses.replace(self, **_fold_flat_clip(kw, self.clip))


def tiny_config(preset: str = "ucf", embed_dim: int = 32, **overrides: Any) -> VadConfig:
    """A preset with the tiny random-init CLIP (no download; for tests and the demo)."""
    overrides.setdefault("clip", ClipSpec.tiny(embed_dim))
    return VadConfig.from_preset(preset, **overrides)
