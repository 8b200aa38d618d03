"""Where a feature set came from, and whether a model fits it (no torch, no ray).

A feature set's provenance is a small mapping stored in the metadata of every Parquet
part (key ``vadclip.io.provenance``): the CLIP model, its weights (tag or source and the
SHA-256 of the file loaded), image size and normalisation, snippet length and which
frame of a snippet is taken, crops and the resize/crop rule, the encoder precision
and decoder asked for, and the vadclip version.  A model records the provenance of the
features it was trained on (``VadConfig.feature_provenance``: checkpoint, MLflow run,
registered version).  :func:`mismatch` says in one line where the two disagree on what
changes the features' meaning; precision and decoder change them by rounding only
(cosine >= 0.9999) and are shown, not compared.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Optional

import pyarrow as pa

from vadclip.errors import InputError

KEY = b"vadclip.io.provenance"
FRAME_RULE = "middle frame of each snippet (the last frame for a short last snippet)"
OFFICIAL_RELEASE = "VadCLIP official release (nwpu-zxr/VadCLIP)"
# what makes two feature sets (or a model and a feature set) differ in meaning
COMPARED = ("clip_model", "weights", "image_size", "mean", "std", "snippet_len", "frame_rule")
# what a second run into the same output folder must repeat
SAME_FOLDER = COMPARED + ("crops", "crop_rule", "precision", "decoder")


# the OpenAI CLIP normalisation (open_clip's default; the official features used it)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ProvenanceError(InputError):
    """Features that do not fit a model, or an output folder that would mix provenances."""


def crop_rule(crops: int) -> str:
    if crops == 1:
        return "short side resized to the image size (bicubic, antialiased), centre crop"
    rule = "short side resized to image size x 256/224 (bicubic, antialiased); centre and four corner crops"
    return rule + (", then the same five of the horizontally flipped frame" if crops == 10 else "")


def extraction(spec, weights, image_size: int, mean, std, snippet_len: int, crops: int, precision: str,
               decoder: str, version: str) -> Dict[str, Any]:
    """The provenance of a feature set ``vadclip extract`` writes with these settings."""
    return {"source": "vadclip extract", "vadclip_version": version, "clip_model": spec.model,
            "clip_pretrained": spec.pretrained, "clip_kwargs": dict(spec.kwargs),
            "weights": weights.digest if weights is not None else "random-init (seeded)",
            "image_size": int(image_size), "mean": [round(float(v), 8) for v in mean],
            "std": [round(float(v), 8) for v in std], "snippet_len": int(snippet_len), "frame_rule": FRAME_RULE,
            "crops": int(crops), "crop_rule": crop_rule(crops), "precision": precision, "decoder": decoder}


def official(crops: Iterable[int], version: str) -> Dict[str, Any]:
    """The provenance of features imported from the official release (ViT-B/16 with the
    OpenAI weights, 16-frame snippets, ten crops; the crop of each row from its file name)."""
    return {"source": OFFICIAL_RELEASE, "vadclip_version": version, "clip_model": "ViT-B-16",
            "clip_pretrained": "openai", "weights": "openai", "image_size": 224,
            "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD), "snippet_len": 16,
            "frame_rule": None, "crops": sorted(set(int(c) for c in crops)),   # the frame rule is not published
            "crop_rule": "ten crops of the official release; the crop from the file name (NAME__K.npy)",
            "precision": "official release", "decoder": "official release"}


def with_provenance(schema: pa.Schema, prov: Optional[Dict[str, Any]]) -> pa.Schema:
    if not prov:
        return schema
    return schema.with_metadata({**(schema.metadata or {}), KEY: json.dumps(prov, sort_keys=True).encode()})


def of_schema(schema: Optional[pa.Schema]) -> Optional[Dict[str, Any]]:
    raw = (schema.metadata or {}).get(KEY) if schema is not None else None
    return json.loads(raw) if raw else None


def read(path: str) -> Optional[Dict[str, Any]]:
    """The provenance of a feature set (a folder of parts or a Parquet file), from the
    footer of its first file; None for a set written before provenance was recorded,
    or by hand.  Raises :class:`ProvenanceError` when its files disagree with each other."""
    from vadclip.errors import MissingInputError
    from vadclip.io.parts import dataset_files, read_schema

    try:
        files = dataset_files(path, "feature set")
    except MissingInputError:
        files = []          # a new folder
    seen: Dict[str, Dict[str, Any]] = {}
    for end in (files, files[::-1]):
        for f in end:
            try:
                prov = of_schema(read_schema(f))
            except FileNotFoundError:
                continue        # committed but gone from the store: the next run takes it out of the table
            if prov is not None:
                seen[f] = prov
            break
    provs = list(seen.values())
    if len(provs) == 2 and _key(provs[0], SAME_FOLDER) != _key(provs[1], SAME_FOLDER):
        raise ProvenanceError(f"{path}: its files have different provenances ({describe(provs[0])} vs "
                              f"{describe(provs[1])})")
    return provs[0] if provs else None


def _key(prov: Dict[str, Any], keys) -> Dict[str, Any]:
    return {k: prov.get(k) for k in keys}


def differences(a: Optional[Dict[str, Any]], b: Optional[Dict[str, Any]], keys=COMPARED) -> List[str]:
    """``key a≠b`` for each compared key where ``a`` and ``b`` disagree; nothing is
    compared where a side is unknown (no provenance, or a value it does not know:
    the official release does not say which frame of a snippet it took)."""
    if not a or not b:
        return []
    return [f"{k} {_show(a.get(k))} vs {_show(b.get(k))}" for k in keys
            if a.get(k) is not None and b.get(k) is not None and not _same(k, a, b)]


def _same(key: str, a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    if key == "weights" and not (_is_digest(a.get(key)) and _is_digest(b.get(key))):
        # a digest against a tag (the official release names its weights by tag): the tags decide
        return a.get("clip_pretrained") == b.get("clip_pretrained")
    va, vb = a.get(key), b.get(key)
    if isinstance(va, list) and isinstance(vb, list) and len(va) == len(vb) and key in ("mean", "std"):
        return all(abs(float(x) - float(y)) < 1e-6 for x, y in zip(va, vb))
    return va == vb


def _is_digest(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _show(v: Any) -> str:
    if _is_digest(v):
        return f"sha256:{v[:12]}"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def describe(prov: Optional[Dict[str, Any]]) -> str:
    if not prov:
        return "unknown provenance"
    return (f"{prov.get('clip_model')} {prov.get('clip_pretrained')} ({_show(prov.get('weights'))}), "
            f"{prov.get('image_size')} px, {prov.get('snippet_len')}-frame snippets, crops {prov.get('crops')}, "
            f"{prov.get('precision')}, {prov.get('decoder')}; {prov.get('source')}")


def mismatch(model_prov: Optional[Dict[str, Any]], feat_prov: Optional[Dict[str, Any]], model_name: str,
             feature_name: str) -> Optional[str]:
    """One line naming both sides where a model's training features and a feature set
    disagree on what changes the features' meaning; None where they agree or where a
    side is unknown."""
    diff = differences(feat_prov, model_prov)
    if not diff:
        return None
    return (f"{feature_name} do not fit {model_name}: features vs the model's training features differ in "
            f"{'; '.join(diff)}")


def check_fit(cfg, features: str, model_name: str, allow: bool = False, log=None) -> Optional[str]:
    """Do ``features`` fit a model of config ``cfg`` (the provenance of its training
    features against theirs)?  A mismatch is a one-line :class:`ProvenanceError` naming
    both sides, or, with ``allow``, a warning line that is returned for the record."""
    import logging

    line = mismatch(cfg.feature_provenance, read(features), model_name, f"the features {features}")
    if line and not allow:
        raise ProvenanceError(line + "; --allow-feature-mismatch uses them anyway (and records it)")
    if line:
        (log or logging.getLogger("vadclip").info)(f"WARNING {line} (used anyway: --allow-feature-mismatch)")
    return line
