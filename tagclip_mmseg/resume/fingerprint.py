"""Fingerprints of what decides a run's outputs, for reusing them safely.

A model describes itself with ``resume_settings()`` (plain JSON values: its
vocabulary, weights, method settings); hashing that description, and deciding
what else belongs in it, is the resume machinery's business, not the model's.
"""
import hashlib
import json

__all__ = ['resume_fingerprint', 'tagging_fingerprint']


def resume_fingerprint(model) -> str:
    """A hex SHA-256 of ``model.resume_settings()``.

    Equal fingerprints mean equal outputs for equal pixels, so a journal
    written under one can be reused by a run under the other.
    """
    return hashlib.sha256(
        json.dumps(model.resume_settings(), sort_keys=True).encode()).hexdigest()


def tagging_fingerprint(model, pipeline_signature: str = '') -> str:
    """The fingerprint a tagging journal is written and read under.

    Combines the model's :func:`resume_fingerprint` with the signature of the
    transforms that prepare the pixels (``SkipTagged.pipeline_signature``;
    empty without ``SkipTagged``), since both decide the scores.
    """
    return hashlib.sha256(
        f'{resume_fingerprint(model)}\n{pipeline_signature}'.encode()).hexdigest()
