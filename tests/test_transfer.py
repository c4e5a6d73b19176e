"""Cross-domain transfer: the `transfer` config list (workflow/transfer.py) and the summary's
transferred rows (trained_on, references on the evaluated dataset). The end-to-end run is in
tests/test_transfer_workflow.py."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from test_summary import long_rows, row
from tiny_workflow import ROOT
from workflow import config as cfg, summary
from workflow.runs import Run
from workflow.transfer import Transfer, transfers


def config_with(transfer, methods=("base", "sft-open", "dmpo-open", "dmpo-open-k7", "llara-open")):
    return cfg.validate({
        "datasets": {"movies": {"format": "movielens-100k", "path": "/data/ml", "domain": "movie"},
                     "games": {"format": "amazon-2018", "path": "/data/amazon", "category": "Video_Games",
                               "domain": "game"}},
        "methods": list(methods),
        "transfer": transfer,
    })


def test_no_transfer_by_default():
    config = cfg.load(ROOT / "config" / "config.yaml")
    assert config["transfer"] == [] and transfers(config) == []


def test_entries_resolve_to_runs_of_methods():
    config = config_with([{"from": "movies", "to": "games", "methods": ["sft-open", "dmpo"]},
                          {"from": "games", "to": "movies", "methods": ["sft", "sft-open"]}])
    assert transfers(config) == [
        Transfer("movies", "games", Run("sft", "open")),
        Transfer("movies", "games", Run("dmpo", "open")),  # a bare method: each of its runs in `methods`
        Transfer("movies", "games", Run("dmpo", "open", k=7)),
        Transfer("games", "movies", Run("sft", "open")),  # listed twice, kept once
    ]


def test_a_run_transfers_at_every_training_seed():
    config = config_with([{"from": "movies", "to": "games", "methods": ["sft-open", "dmpo-open-k7-s43"]}])
    config["seeds"] = [42, 43]
    assert [t.run.name for t in transfers(config)] == ["sft-open", "sft-open-s43", "dmpo-open-k7-s43"]


@pytest.mark.parametrize("entry, message", [
    ({"from": "books", "to": "games", "methods": ["sft"]}, "from 'books' is not a dataset (datasets: movies, games)"),
    ({"from": "movies", "to": "steam", "methods": ["sft"]}, "to 'steam' is not a dataset"),
    ({"from": "games", "to": "games", "methods": ["sft"]}, "from and to are the same dataset 'games'"),
    ({"from": "movies", "to": "games", "methods": ["sdpo"]}, "'sdpo' is not a run of `methods`"),
    ({"from": "movies", "to": "games", "methods": ["dmpo-open-k3"]}, "'dmpo-open-k3' is not a run of `methods`"),
    ({"from": "movies", "to": "games", "methods": ["sft-sideways"]}, "unknown prompt 'sideways'"),
    ({"from": "movies", "to": "games", "methods": ["llara"]}, "llara and ilora runs cannot transfer"),
    ({"from": "movies", "to": "games", "methods": ["ilora-open"]}, "llara and ilora runs cannot transfer"),
    ({"from": "movies", "to": "games", "methods": ["base"]}, "base model is never trained"),
])
def test_a_wrong_entry_names_the_key_and_the_entry(entry, message):
    config = config_with([{"from": "movies", "to": "games", "methods": ["sft"]}, entry])
    with pytest.raises(cfg.ConfigError) as err:
        transfers(config)
    assert str(err.value).startswith("config key 'transfer[1]' ({")
    assert f"'from': '{entry['from']}'" in str(err.value)
    assert message in str(err.value)


def test_schema_requires_from_to_and_methods():
    with pytest.raises(cfg.ConfigError, match=r"config key 'transfer\.0': 'methods' is a required property"):
        config_with([{"from": "movies", "to": "games"}])
    with pytest.raises(cfg.ConfigError, match=r"config key 'transfer\.0'.*'target' was unexpected"):
        config_with([{"from": "movies", "to": "games", "methods": ["sft"], "target": "x"}])


def test_snakemake_reports_a_wrong_entry(tmp_path):
    from test_config import _snakemake

    out = _snakemake("-n", "--config", f"results={tmp_path}/results",
                     'transfer=[{"from": "ml-100k", "to": "ml-100k", "methods": ["sft"]}]')
    assert out.returncode != 0
    assert "config key 'transfer[0]'" in out.stdout + out.stderr
    assert "same dataset 'ml-100k'" in out.stdout + out.stderr


# ---------------------------------------------------------------------------------------------
# the summary: transferred rows beside the evaluated dataset's own

def transfer_rows(method, selection, protocol, metric, values, trained_on="movies"):
    return long_rows(method, selection, protocol, metric, values, dataset="games").assign(trained_on=trained_on)


def games_metrics():
    rng = np.random.default_rng(0)
    n = 40
    own = pd.concat([
        long_rows("popularity", "none", "likelihood", "hr@1", rng.random(n) < 0.3, dataset="games"),
        long_rows("base-open", "none", "likelihood", "hr@1", rng.random(n) < 0.2, dataset="games"),
        long_rows("sft-open", "random", "likelihood", "hr@1", rng.random(n) < 0.9, dataset="games"),
        long_rows("sft-open", "random", "likelihood", "hr@1", rng.random(n) < 0.5, dataset="movies"),
    ])
    transferred = pd.concat([transfer_rows("sft-open", "random", "likelihood", "hr@1", rng.random(n) < 0.4),
                             transfer_rows("dmpo-open", "random", "likelihood", "hr@1", rng.random(n) < 0.6)])
    return own, transferred


def test_transferred_rows_say_both_datasets_and_read_against_the_evaluated_one(tmp_path):
    own, transferred = games_metrics()
    paths = [tmp_path / "own.parquet", tmp_path / "transfer.parquet"]
    own.to_parquet(paths[0])
    transferred.to_parquet(paths[1])
    metrics = summary.read_metrics(paths)  # the same (games, sft-open, random) rows twice: own and transferred
    table = summary.summarize(metrics, 0, 0.95, seed=0)
    assert list(table.columns) == summary.SCHEMA.names
    assert (table["trained_on"] == table["dataset"]).sum() == 4
    moved = table[table["trained_on"] != table["dataset"]]
    assert set(zip(moved["dataset"], moved["trained_on"], moved["method"])) == {
        ("games", "movies", "sft-open"), ("games", "movies", "dmpo-open")}

    def mean(frame, method, dataset="games"):
        return frame.loc[(frame["method"] == method) & (frame["dataset"] == dataset), "value"].mean()

    dmpo, sft = (moved[moved["method"] == m].iloc[0] for m in ("dmpo-open", "sft-open"))
    # base and popularity: the evaluated dataset's own rows
    assert dmpo["delta_vs_base"] == pytest.approx(mean(transferred, "dmpo-open") - mean(own, "base-open"))
    assert dmpo["delta_vs_popularity"] == pytest.approx(mean(transferred, "dmpo-open") - mean(own, "popularity"))
    # sft: the sft run transferred from the same dataset, not the evaluated dataset's own sft
    assert dmpo["delta_vs_sft"] == pytest.approx(mean(transferred, "dmpo-open") - mean(transferred, "sft-open"))
    assert pd.isna(sft["sft_selection"]) and np.isnan(sft["delta_vs_sft"])
    assert sft["delta_vs_base"] == pytest.approx(mean(transferred, "sft-open") - mean(own, "base-open"))
    # the dataset's own sft row is unchanged by the transferred rows
    alone = summary.summarize(summary.read_metrics(paths[:1]), 0, 0.95, seed=0)
    pd.testing.assert_frame_equal(table[table["trained_on"] == table["dataset"]].reset_index(drop=True), alone)

    md = summary.markdown(table, 0, 0.95, seed=0)
    assert "| sft-open / random |" in md and "| sft-open / random (trained on movies) |" in md
    assert "| dmpo-open / random (trained on movies) |" in md


def test_without_the_transferred_sft_there_is_no_sft_comparison():
    own, transferred = games_metrics()
    table = summary.summarize(pd.concat([own, transferred[transferred["method"] == "dmpo-open"]]), 0, 0.95, seed=0)
    dmpo = row(table[table["trained_on"] != table["dataset"]], "dmpo-open", "likelihood", "hr@1")
    assert pd.isna(dmpo["sft_selection"]) and np.isnan(dmpo["delta_vs_sft"])
    assert dmpo["base_selection"] == "none"
    assert row(table[table["dataset"] == "games"], "sft-open", "likelihood", "hr@1")["base_selection"] == "none"
