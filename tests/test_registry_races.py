"""Promotion and rollback are compare-and-set on the alias, and only MLflow's "not found" means "no champion"."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE, RESOURCE_ALREADY_EXISTS

from cxrlt import registry as R
from cxrlt.platform import CHALLENGER_ALIAS, CHAMPION_ALIAS


def _unset(alias: str) -> MlflowException:
    """What MLflow's registry raises for an alias that is not set."""
    return MlflowException(f"Registered model alias {alias} not found.", INVALID_PARAMETER_VALUE)


class FakeRegistry:
    """The MlflowClient calls promotion makes, with scripted alias reads (to stage races and outages)."""

    def __init__(self, aliases: dict[str, str], reads: dict[str, list] | None = None):
        self.aliases, self.reads, self.deleted = dict(aliases), reads or {}, []
        self.models: dict[str, dict] = {}  # the promotion lease is a registered model

    def create_registered_model(self, name, tags=None, description=None):
        if name in self.models:
            raise MlflowException(f"Registered Model (name={name}) already exists.", RESOURCE_ALREADY_EXISTS)
        self.models[name] = dict(tags or {})

    def get_registered_model(self, name):
        return SimpleNamespace(name=name, tags=self.models[name])

    def delete_registered_model(self, name):
        del self.models[name]

    def get_model_version_by_alias(self, name, alias):
        if self.reads.get(alias):
            value = self.reads[alias].pop(0)
            if isinstance(value, Exception):
                raise value
            return SimpleNamespace(version=value)
        if alias not in self.aliases:
            raise _unset(alias)
        return SimpleNamespace(version=self.aliases[alias])

    def get_model_version(self, name, version):
        return SimpleNamespace(version=str(version), tags={"gate_evidence": '{"passed": true}'})

    def set_registered_model_alias(self, name, alias, version):
        self.aliases[alias] = str(version)

    def delete_registered_model_alias(self, name, alias):
        self.deleted.append(alias)
        self.aliases.pop(alias, None)


@pytest.fixture
def moves(monkeypatch):
    recorded = []
    monkeypatch.setattr(R, "_audit", lambda client, name, entry: recorded.append(entry))
    return recorded


def _use(monkeypatch, fake):
    monkeypatch.setattr(R, "_client", lambda uri=None: fake)


def test_transient_error_reading_the_champion_aborts_promotion(monkeypatch, moves, tmp_path):
    outage = MlflowException("database is locked", INTERNAL_ERROR)
    fake = FakeRegistry({CHALLENGER_ALIAS: "2", CHAMPION_ALIAS: "1"}, {CHAMPION_ALIAS: [outage]})
    _use(monkeypatch, fake)
    with pytest.raises(R.RegistryError, match="could not read .*champion.*INTERNAL_ERROR"):
        R.promote(tmp_path / "labels.csv")
    assert fake.aliases == {CHALLENGER_ALIAS: "2", CHAMPION_ALIAS: "1"} and moves == []
    assert fake.models == {}, "the lease is released when the promotion fails"


def test_no_champion_only_when_mlflow_says_not_found(monkeypatch, moves, tmp_path):
    fake = FakeRegistry({CHALLENGER_ALIAS: "1"})
    _use(monkeypatch, fake)
    decision = R.promote(tmp_path / "labels.csv")
    assert decision["promoted"] and decision["reason"] == "no champion yet"
    assert fake.aliases == {CHAMPION_ALIAS: "1"}
    assert [(m["alias"], m["phase"]) for m in moves] == [(CHAMPION_ALIAS, "intent"), (CHAMPION_ALIAS, "done"),
                                                         (CHALLENGER_ALIAS, "intent"), (CHALLENGER_ALIAS, "done")]
    assert moves[0]["move_id"] == moves[1]["move_id"] != moves[2]["move_id"]
    assert fake.models == {}, "the lease is released"


def test_champion_moved_meanwhile_is_not_overwritten(monkeypatch, moves, tmp_path):
    # the decision saw no champion; by the time of the move another promotion had set one
    fake = FakeRegistry({CHALLENGER_ALIAS: "2"}, {CHAMPION_ALIAS: [_unset(CHAMPION_ALIAS), "3"]})
    _use(monkeypatch, fake)
    with pytest.raises(R.RegistryError, match="moved from None to 3"):
        R.promote(tmp_path / "labels.csv")
    assert CHAMPION_ALIAS not in fake.aliases and moves == []


def test_a_newer_challenger_keeps_its_alias(monkeypatch, moves, tmp_path):
    # challenger 1 is promoted; meanwhile version 4 was registered and took the challenger alias
    fake = FakeRegistry({CHAMPION_ALIAS: "0"}, {CHALLENGER_ALIAS: ["1", "4"]})
    fake.aliases[CHALLENGER_ALIAS] = "4"
    monkeypatch.setattr(R, "_evaluation_folder", lambda model_version: tmp_path)  # holds no groups.csv
    monkeypatch.setattr(R, "_predictions", lambda folder, version: None)
    monkeypatch.setattr(R, "paired_bootstrap", lambda *a, **k: {"diff": 0.0, "ci95": [0.0, 0.0], "n_images": 1})
    monkeypatch.setattr("cxrlt.data.tables.read_label_csv", lambda path: (None, None))
    _use(monkeypatch, fake)
    decision = R.promote(tmp_path / "labels.csv")
    assert decision["promoted"] and fake.aliases == {CHAMPION_ALIAS: "1", CHALLENGER_ALIAS: "4"}
    assert fake.deleted == []


def test_a_promotion_in_progress_refuses_another_and_an_expired_lease_is_broken(monkeypatch, moves, tmp_path):
    import time

    fake = FakeRegistry({CHALLENGER_ALIAS: "1"})
    _use(monkeypatch, fake)
    lease = R.REGISTERED_MODEL + R.LEASE_SUFFIX
    fake.models[lease] = {"holder": "promoter@node-a:7", "expires_at": str(time.time() + 60)}
    with pytest.raises(R.RegistryError, match="another promotion .* in progress .*promoter@node-a:7"):
        R.promote(tmp_path / "labels.csv")
    assert CHAMPION_ALIAS not in fake.aliases and moves == [] and lease in fake.models  # not ours to release
    fake.models[lease]["expires_at"] = str(time.time() - 1)  # its holder died
    assert R.promote(tmp_path / "labels.csv")["promoted"] and fake.aliases[CHAMPION_ALIAS] == "1"
    assert fake.models == {}
