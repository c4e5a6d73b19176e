"""SASRec surrogate: RecBole training on a tiny synthetic dataset, exports, id alignment,
determinism, metrics on known scores, checkpoint errors, RecBole compatibility measures."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from workflow import metrics, recbole_compat, surrogate

TINY = {"hidden_size": 16, "n_layers": 1, "n_heads": 2, "inner_size": 32, "dropout": 0.1, "lr": 0.01,
        "epochs": 2, "patience": 2, "batch_size": 32, "eval_every": 1, "device": "cpu"}
EXTRA = ["x0", "x1", "x2", "x3"]  # items that only ever appear as negative candidates


def synthetic_tables(n_users=24, n_items=20, seq_len=9, max_history=5, n_candidates=6, seed=0):
    """Users walk through items in steps of 2 from a random start (a learnable pattern); the
    last step is test, the one before valid, the rest train. One item id holds a space."""
    rng = np.random.default_rng(seed)
    item_ids = [f"i{k:02d}" for k in range(n_items)]
    item_ids[7] = "i 07"
    rows = []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        seq = [item_ids[(start + 2 * t) % n_items] for t in range(seq_len)]
        pool = [i for i in item_ids + EXTRA if i not in seq]
        for t in range(1, seq_len):
            split = "test" if t == seq_len - 1 else "valid" if t == seq_len - 2 else "train"
            negatives = list(rng.choice(pool, n_candidates - 1, replace=False))
            candidates = negatives + [seq[t]]
            rng.shuffle(candidates)
            rows.append({"sample_id": f"u{u}-{t}", "split": split, "user_id": f"u{u}",
                         "history": seq[max(0, t - max_history):t], "target": seq[t], "candidates": candidates})
    samples = pd.DataFrame(rows)
    all_items = item_ids + EXTRA + ["unused"]
    items = pd.DataFrame({"item_id": all_items, "title": [f"Title {i}" for i in all_items],
                          "categories": [[] for _ in all_items]})
    return samples, items


@pytest.fixture(scope="module")
def tables():
    return synthetic_tables()


@pytest.fixture(scope="module")
def exported(tables, tmp_path_factory):
    """Runs the stage's command line once, from an empty working directory."""
    samples, items = tables
    base = tmp_path_factory.mktemp("surrogate-stage")
    cwd = base / "cwd"
    cwd.mkdir()
    samples.to_parquet(base / "samples.parquet")
    items.to_parquet(base / "items.parquet")
    out = base / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        code = surrogate.main(["--samples", str(base / "samples.parquet"), "--items", str(base / "items.parquet"),
                               "--out-dir", str(out), "--dataset", "tiny", "--spec", json.dumps(TINY),
                               "--seed", "7", "--threads", "1"])
    assert code == 0
    return out, cwd


def test_stage_writes_every_export_and_nothing_else(exported):
    out, cwd = exported
    assert sorted(p.name for p in out.iterdir()) == [
        "item_embeddings.parquet", "metrics.parquet", "model.json", "model.pt", "sequence_repr.parquet"]
    assert list(cwd.iterdir()) == []  # no ./saved, ./log or ./log_tensorboard from RecBole


def test_checkpoint_is_a_plain_state_dict(exported):
    out, _ = exported
    state = torch.load(out / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    meta = json.loads((out / "model.json").read_text())
    assert state["item_embedding.weight"].shape == (meta["hyper_parameters"]["n_items"], TINY["hidden_size"])
    assert meta["training"]["epochs_run"] == 2
    assert meta["training"]["train_samples"] == 24 * 6


def test_export_shapes_and_vocabulary(tables, exported):
    samples, _ = tables
    out, _ = exported
    emb = pd.read_parquet(out / "item_embeddings.parquet")
    used = set(samples.target) | {i for h in samples.history for i in h} | {c for cs in samples.candidates for c in cs}
    assert set(emb.item_id) == used  # candidate-only items included, never-used items not
    assert set(EXTRA) <= set(emb.item_id) and "unused" not in set(emb.item_id)
    assert emb.item_id.is_unique
    assert {len(e) for e in emb.embedding} == {TINY["hidden_size"]}
    reprs = pd.read_parquet(out / "sequence_repr.parquet")
    assert reprs.sample_id.tolist() == samples.sample_id.tolist()  # every split
    assert {len(r) for r in reprs["repr"]} == {TINY["hidden_size"]}
    import pyarrow.parquet as pq
    assert str(pq.read_schema(out / "item_embeddings.parquet").field("embedding").type) == "list<element: float>"


def test_embeddings_map_to_the_right_items(exported):
    """Row k of the checkpoint's embedding table is item_ids[k - 1]; row 0 is padding."""
    out, _ = exported
    loaded = surrogate.load_surrogate(out)
    table = loaded.model.item_embedding.weight.detach().numpy()
    emb = pd.read_parquet(out / "item_embeddings.parquet")
    for item_id, vector in zip(emb.item_id, emb.embedding):
        np.testing.assert_array_equal(vector, table[loaded.index_of_item[item_id]])
    assert not any(np.array_equal(table[0], np.asarray(v)) for v in emb.embedding)


def test_exported_scores_reproduce_recbole_validation(tables, exported):
    """Scores from the exported parquet files (no RecBole involved) give the valid NDCG@10 that
    RecBole's own data pipeline and evaluator reported for the best epoch: catches any
    off-by-one, padding-row or sequence-layout mix-up between RecBole and the exports."""
    samples, _ = tables
    out, _ = exported
    meta = json.loads((out / "model.json").read_text())
    emb = pd.read_parquet(out / "item_embeddings.parquet")
    reprs = pd.read_parquet(out / "sequence_repr.parquet").set_index("sample_id")
    valid = samples[samples.split == "valid"]
    column = {item: k for k, item in enumerate(emb.item_id)}
    scores = np.stack(reprs.loc[valid.sample_id, "repr"].to_numpy()) @ np.stack(emb.embedding.to_numpy()).T
    ranks = metrics.full_ranking_ranks(scores, np.array([column[t] for t in valid.target]))  # RecBole: no exclusion
    assert metrics.ndcg(ranks, 10).mean() == pytest.approx(meta["training"]["best_valid_ndcg@10"], abs=1e-4)


def test_sequence_repr_is_the_model_output_at_the_last_position(tables, exported):
    samples, _ = tables
    out, _ = exported
    loaded = surrogate.load_surrogate(out)
    reprs = pd.read_parquet(out / "sequence_repr.parquet")
    history = list(samples.history.iloc[3])
    ids = torch.tensor([[loaded.index_of_item[i] for i in history]])  # unpadded: padding layout cannot matter
    with torch.no_grad():
        direct = loaded.model(ids, torch.tensor([len(history)]))[0]
    assert len(history) < loaded.hyper_parameters["max_seq_length"]  # the export padded this one
    np.testing.assert_allclose(reprs["repr"].iloc[3], direct.numpy(), rtol=1e-5, atol=1e-6)


def test_cross_entropy_loss_is_recboles_training_loss(tables, exported):
    from recbole.data.interaction import Interaction

    samples, _ = tables
    loaded = surrogate.load_surrogate(Path(exported[0]))
    part = samples[samples.split == "train"].head(5)
    ours = surrogate.cross_entropy_loss(loaded, part.history.tolist(), part.target.tolist(), reduction="mean")
    seq, lengths = surrogate.encode_histories(part.history.tolist(), loaded.index_of_item, loaded.model.max_seq_length)
    batch = Interaction({"item_id_list": seq, "item_length": lengths,
                         "item_id": torch.tensor([loaded.index_of_item[t] for t in part.target])})
    # the same formula through other kernels (a gather of target logits against RecBole's
    # CrossEntropyLoss): float32 rounding of a mean over 5 log-softmaxes, not equality
    assert ours.item() == pytest.approx(loaded.model.calculate_loss(batch).item(), rel=1e-5)


def test_metrics_parquet_layout(tables, exported):
    samples, _ = tables
    out, _ = exported
    frame = pd.read_parquet(out / "metrics.parquet")
    assert list(frame.columns) == metrics.FRAME_COLUMNS
    assert set(frame.method) == {"sasrec"} and set(frame.selection) == {"all"} and set(frame.dataset) == {"tiny"}
    assert set(frame.split) == {"valid", "test"}
    likelihood = frame[frame.protocol == "likelihood"]
    full = frame[frame.protocol == "full_ranking"]
    assert set(likelihood.metric) == {"hr@1", "hr@5", "ndcg@5", "ndcg@10", "mrr", "auc"}
    assert set(full.metric) == {f"{m}@{k}" for m in ("hr", "ndcg") for k in (1, 5, 10, 20)}
    n_eval = samples.split.isin(["valid", "test"]).sum()
    assert len(likelihood) == 6 * n_eval and len(full) == 8 * n_eval
    assert frame.value.between(0, 1).all()


def test_same_seed_same_embeddings(tables):
    samples, items = tables
    one = surrogate.train_surrogate(samples, items, {**TINY, "epochs": 1}, seed=3)
    two = surrogate.train_surrogate(samples, items, {**TINY, "epochs": 1}, seed=3)
    other = surrogate.train_surrogate(samples, items, {**TINY, "epochs": 1}, seed=4)
    assert one.item_ids == two.item_ids
    np.testing.assert_array_equal(surrogate.item_embeddings(one), surrogate.item_embeddings(two))
    assert not np.array_equal(surrogate.item_embeddings(one), surrogate.item_embeddings(other))


def test_training_files_hold_only_train_samples(tables, tmp_path):
    samples, items = tables
    vocab = surrogate.item_vocabulary(samples, items)
    surrogate.write_atomic_files(samples, vocab, tmp_path)
    name = surrogate.ATOMIC_NAME
    train = pd.read_csv(tmp_path / f"{name}.train.inter", sep="\t", dtype=str)
    code = {item: str(k + 1) for k, item in enumerate(vocab)}
    expected = samples[samples.split == "train"]
    assert train["item_id:token"].tolist() == [code[t] for t in expected.target]
    assert train["item_id_list:token_seq"].tolist() == [" ".join(code[i] for i in h) for h in expected.history]
    # RecBole needs a test file: it repeats valid, so test targets never reach RecBole
    assert (tmp_path / f"{name}.test.inter").read_text() == (tmp_path / f"{name}.valid.inter").read_text()


def test_metrics_on_known_scores(tmp_path):
    """Item embeddings and sequence representations set by hand: scores a=3, b=2, c=1, d=0."""
    item_ids = ["a", "b", "c", "d"]
    hp = {"model": "SASRec", "n_items": 5, "max_seq_length": 3, "hidden_size": 2, "n_layers": 1, "n_heads": 1,
          "inner_size": 4, "hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0, **surrogate.FIXED_MODEL}
    model = surrogate.build_sasrec(hp)
    with torch.no_grad():
        model.item_embedding.weight[:] = torch.tensor([[9.0, 9.0], [3, 0], [2, 0], [1, 0], [0, 0]])
    known = surrogate.Surrogate(model=model, item_ids=item_ids, hyper_parameters=hp)
    samples = pd.DataFrame({
        "sample_id": ["s1", "s2"], "split": ["test", "valid"], "user_id": ["u1", "u2"],
        "history": [["a"], ["d"]], "target": ["c", "b"], "candidates": [["c", "d", "a"], ["d", "b", "c"]]})
    reprs = np.array([[1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    frame = surrogate.evaluate_surrogate(known, samples, "toy", representations=reprs)
    value = frame.set_index(["protocol", "sample_id", "metric"])["value"]
    # s1 candidates c=1, d=0, a=3: c ranks 1; AUC 1/2
    assert value["likelihood", "s1", "hr@1"] == 0 and value["likelihood", "s1", "mrr"] == 0.5
    assert value["likelihood", "s1", "auc"] == 0.5
    # s2 candidates d=0, b=2, c=1: b ranks 0
    assert value["likelihood", "s2", "hr@1"] == 1 and value["likelihood", "s2", "auc"] == 1
    # full ranking, history excluded: s1 ranks c below b only (a is history) -> rank 1
    assert value["full_ranking", "s1", "hr@1"] == 0 and value["full_ranking", "s1", "hr@5"] == 1
    assert value["full_ranking", "s1", "ndcg@5"] == pytest.approx(1 / np.log2(3))
    # s2: b is below a only -> rank 1 (d, the history, is below anyway)
    assert value["full_ranking", "s2", "ndcg@1"] == 0 and value["full_ranking", "s2", "hr@5"] == 1


def test_missing_or_corrupt_checkpoint_names_the_file(exported, tmp_path):
    out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"model\.pt: cannot load"):
        surrogate.load_surrogate(copy)
    truncated = (out / "model.pt").read_bytes()[:200]
    (copy / "model.pt").write_bytes(truncated)
    with pytest.raises(ValueError, match=r"model\.pt"):
        surrogate.load_surrogate(copy)
    (copy / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.pt"):
        surrogate.load_surrogate(copy)
    (copy / "model.json").write_text("{")
    with pytest.raises((ValueError, FileNotFoundError), match=r"model\.(json|pt)"):
        surrogate.load_surrogate(copy)


def test_checkpoint_from_another_model_is_rejected(exported, tmp_path):
    out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["hyper_parameters"]["hidden_size"] = 8
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model\.pt: weights do not match"):
        surrogate.load_surrogate(copy)


def test_bad_input_is_reported_with_the_file(tables, tmp_path):
    samples, items = tables
    items.iloc[:3].to_parquet(tmp_path / "items.parquet")
    samples.to_parquet(tmp_path / "samples.parquet")
    args = ["--samples", str(tmp_path / "samples.parquet"), "--items", str(tmp_path / "items.parquet"),
            "--out-dir", str(tmp_path / "out"), "--dataset", "tiny"]
    with pytest.raises(ValueError, match="items.parquet: .* item ids used in the samples are missing"):
        surrogate.run_stage(*args[1::2], None, 0)
    assert surrogate.main(args) == 1
    assert surrogate.main(["--samples", str(tmp_path / "nope.parquet")] + args[2:]) == 1
    with pytest.raises(ValueError, match="sample 'u0-1' has unknown split 'dev'"):
        surrogate.check_samples(samples.assign(split="dev"))
    ragged = samples.copy()
    ragged.at[0, "candidates"] = ragged.at[0, "candidates"][:-1]
    with pytest.raises(ValueError, match="candidate lists differ in length"):
        surrogate.check_samples(ragged)
    with pytest.raises(ValueError, match="sample 'u0-1' has an empty history"):
        surrogate.check_samples(samples.assign(history=[[]] * len(samples)))
    with pytest.raises(ValueError, match=r"config key 'surrogate': .*'hiden_size' was unexpected"):
        surrogate.resolve_settings({"hiden_size": 3})
    with pytest.raises(ValueError, match="config key 'surrogate.epochs'"):
        surrogate.resolve_settings({"epochs": 0})


def test_compat_measures():
    recbole_compat.apply()
    assert np.float_ is np.float64
    assert not torch.is_anomaly_enabled()  # RecBole's SINE import turns it on
    from recbole.model.layers import FeedForward

    x = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(FeedForward.gelu(None, x), x * 0.5 * (1.0 + torch.erf(x / 2**0.5)))
    original = pd.Series.agg
    with recbole_compat._elementwise_agg_len():
        assert pd.Series([[1, 2], [3]]).agg(len).tolist() == [2, 1]
    assert pd.Series.agg is original and pd.Series([[1, 2], [3]]).agg(len) == 2


def test_check_no_missing_names_file_and_line(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\titem_id_list:token_seq\titem_id:token\n1\t2 3\t4\n2\t\t5\n")
    with pytest.raises(ValueError, match=r"x\.inter: line 3: empty value in column 'item_id_list:token_seq'"):
        recbole_compat.check_no_missing(path)


def test_a_tuning_trial_reads_valid_only_and_its_test_metrics_match_the_stage(tables, exported, tmp_path):
    """A trial (the same settings and seed as the stage) writes its model and validation metrics
    only; --test-of then gives the test rows the stage's own metrics hold."""
    samples, items = tables
    samples.to_parquet(tmp_path / "samples.parquet")
    items.to_parquet(tmp_path / "items.parquet")
    trial = tmp_path / "trial"
    common = ["--samples", str(tmp_path / "samples.parquet"), "--items", str(tmp_path / "items.parquet"),
              "--out-dir", str(trial), "--dataset", "tiny", "--spec", json.dumps(TINY), "--seed", "7", "--threads", "1"]
    assert surrogate.main([*common, "--trial"]) == 0
    assert sorted(p.name for p in trial.iterdir()) == ["model.json", "model.pt", "valid.parquet"]
    valid = pd.read_parquet(trial / "valid.parquet")
    assert set(valid["split"]) == {"valid"}
    assert surrogate.main([*common, "--test-of", str(trial)]) == 0
    test = pd.read_parquet(trial / "test.parquet")
    assert set(test["split"]) == {"test"}
    stage = pd.read_parquet(exported[0] / "metrics.parquet")
    for split, frame in (("valid", valid), ("test", test)):
        expected = stage[stage["split"] == split].sort_values(["protocol", "sample_id", "metric"])
        got = frame.sort_values(["protocol", "sample_id", "metric"])
        np.testing.assert_allclose(got["value"].to_numpy(), expected["value"].to_numpy(), atol=1e-6)
