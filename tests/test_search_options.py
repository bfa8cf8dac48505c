"""Strategies as a list, weights per strategy, data per stage, samplers that learn within the
budget, GPU shares and what a cluster can hold: parsing and the pieces behind it; and the
searcher's trials in the study when its driver was killed (the kills themselves, with Ray, are
tests/test_interrupt_resume.py)."""

import optuna
import pytest
import yaml

from search.pretraining import StageData, stage_for
from search.resources import ResourceError, check_resources
from search.samplers import make_sampler, proposed_by, startup_trials
from search.spec import UsageError, parse_pretrained, parse_spec, parse_strategies
from search.study import open_storage
from search.tuning import (
    METRIC,
    MarkedOptunaSearch,
    close_orphans,
    launchable_nodes,
    node_slots,
    trial_slots,
)
from spaces import SpaceContext, get_space, to_trial_values
from trainables.config import TrialConfig
from trainables.data.load import load_pretrain_data
from trainables.strategies import STRATEGIES

SEARCHERS = ("tpe", "random", "cmaes", "qmc", "gp")


def spec(tmp_path, *args):
    return parse_spec(["--storage", str(tmp_path / "runs"), *args])


def test_a_list_of_strategies_keeps_its_order_and_checks_each_name():
    assert parse_strategies("frozen,unfrozen") == ("frozen", "unfrozen")
    assert parse_strategies("unfrozen, frozen,unfrozen") == ("unfrozen", "frozen")
    assert parse_strategies("all") == tuple(STRATEGIES)
    with pytest.raises(UsageError, match="'unfrozn'.*did you mean unfrozen"):
        parse_strategies("frozen,unfrozn")


def test_a_bare_pretrained_stage_leaves_colorization_and_scratch_alone():
    everything = tuple(STRATEGIES)
    bare = parse_pretrained("supervised", everything)
    imagenet_default = {s for s, v in STRATEGIES.items() if v.pretrained == "imagenet"}
    assert set(bare) == imagenet_default and set(bare.values()) == {"supervised"}
    assert "colorization" not in bare and "scratch" not in bare
    both = parse_pretrained("imagenet,colorization=supervised", everything)
    assert both["colorization"] == "supervised" and both["unfrozen"] == "imagenet"
    with pytest.raises(UsageError, match="reaches none of frozen"):  # not in the run
        parse_pretrained("colorization=supervised", ("frozen",))
    with pytest.raises(UsageError, match="reaches none of colorization"):
        parse_pretrained("supervised", ("colorization",))
    with pytest.raises(UsageError, match="unknown stage 'imagnet'"):
        parse_pretrained("imagnet", everything)
    with pytest.raises(UsageError, match="scratch always starts from random weights"):
        parse_pretrained("scratch=imagenet", everything)


def test_pretrain_data_feeds_supervised_and_pretext_data_feeds_colorization(
        tmp_path, tiny_demo):
    from tests.test_pretraining_choice import images

    labeled = load_pretrain_data(str(images(tmp_path / "tree", classes=["a", "b"])),
                                 image_size=16)
    flat = load_pretrain_data(str(images(tmp_path / "flat")), image_size=16)
    s = spec(tmp_path, "--strategy", "all", "--pretrained", "supervised", "--pretrain-data",
             str(tmp_path / "tree"), "--pretext-data", str(tmp_path / "flat"))
    sources = StageData(pretrain=labeled, pretext=flat)
    unfrozen = stage_for(s, "unfrozen", tiny_demo, sources)
    colour = stage_for(s, "colorization", tiny_demo, sources)
    assert unfrozen.kind == "supervised" and unfrozen.data_fingerprint == labeled.fingerprint
    assert colour.kind == "colorization" and colour.data_fingerprint == flat.fingerprint
    assert stage_for(s, "scratch", tiny_demo, sources).kind == "none"


@pytest.mark.parametrize(("args", "message"), [
    (["--strategy", "unfrozen", "--pretext-data", "."], "none of unfrozen starts from it"),
    (["--strategy", "colorization", "--pretrain-data", "."], "add --pretrained supervised"),
    (["--strategy", "frozen", "--gpus-per-trial", "0.3"], "a fraction 1/k such as 0.5"),
    (["--strategy", "frozen", "--gpus-per-trial", "1.5"], "a trial trains on one GPU"),
    (["--strategy", "frozen", "--gpus-per-trial", "2"], "a trial trains on one GPU"),
    (["--strategy", "frozen", "--max-concurrent", "0"], "--max-concurrent 0: must be at least"),
    (["--strategy", "frozen", "--reduction-factor", "1"], "--reduction-factor 1: must be at"),
    (["--strategy", "frozen", "--scheduler", "pbt", "--objective", "acc+time"],
     "--scheduler pbt has no study"),
    (["--strategy", "frozen", "--searcher", "cmaes", "--objective", "acc+time"],
     "needs a multi-objective sampler"),
    (["--resume", "nothing-here"], "--resume nothing-here: no experiment"),
    (["--strategy", "frozen", "--gpus-per-trial", "inf"], "must be a number, 0 or more"),
    (["--strategy", "frozen", "--cpus-per-trial", "nan"], "must be a number above 0"),
    (["--strategy", "frozen", "--optuna-storage", "postgresql://u:pw@db/s"], "PGPASSWORD"),
    (["--config", "best.yaml", "--searcher", "gp"], "without a search; drop --searcher"),
])
def test_bad_option_combinations_are_refused(tmp_path, args, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        spec(tmp_path, *args)


@pytest.mark.parametrize("gpus", ["0", "0.5", "0.25", "0.125", "0.333", "1"])
def test_whole_gpus_and_unit_fractions_are_accepted(tmp_path, gpus):
    assert spec(tmp_path, "--strategy", "frozen", "--gpus-per-trial", gpus).gpus_per_trial == \
        float(gpus)


def test_a_request_no_node_can_hold_is_refused_naming_the_largest_node():
    nodes = [{"CPU": 2.0, "GPU": 0.0}, {"CPU": 8.0, "GPU": 1.0}]
    check_resources(8, 1, nodes)
    check_resources(1, 0.25, nodes)
    with pytest.raises(ResourceError, match="largest node: 8 CPUs, 1 GPUs"):
        check_resources(1, 2, nodes)
    with pytest.raises(ResourceError):
        check_resources(4, 0.5, [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 0.0}])


def test_the_trials_a_cluster_holds_at_once_count_shares_and_launchable_workers(tmp_path,
                                                                               no_ray):
    assert node_slots({"CPU": 2.0}, 1, 0) == 2
    assert node_slots({"CPU": 2.0, "GPU": 1.0}, 0.5, 0.25) == 4  # quarter GPUs, packed
    assert node_slots({"CPU": 16.0, "GPU": 1.0}, 1, 1) == 1
    assert node_slots({"CPU": 0.3}, 0.1, 0) == 3  # 0.3 / 0.1 is 2.999... in floats
    assert node_slots({"CPU": 8.0}, 1, 1) == 0  # no GPU on it
    config = tmp_path / "ray_bootstrap_config.yaml"  # what `ray up` leaves on the head
    config.write_text(yaml.safe_dump({
        "max_workers": 3, "head_node_type": "head",
        "available_node_types": {"head": {"resources": {"CPU": 0}, "max_workers": 0},
                                 "gpu": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 4}}}))
    assert launchable_nodes(config) == [{"CPU": 8, "GPU": 1}] * 3  # the cluster's cap
    assert launchable_nodes(tmp_path / "missing.yaml") == []
    assert trial_slots(spec(tmp_path, "--strategy", "scratch")) is None  # Ray not started


def test_the_searcher_marks_each_proposal_and_yields_once_to_a_waiting_trial(tmp_path):
    """tune_trial_id and proposed_by are written as a trial is proposed; after a trial ends
    while another is live, the next suggest is None once (Tune hands the freed actor to the
    waiting trial first); a trial asked here is never read back from the study per result."""
    storage = open_storage(None, tmp_path)
    searcher = MarkedOptunaSearch(space=get_space("scratch", SpaceContext(max_epochs=2)),
                                  metric=METRIC, mode="max", study_name="s", storage=storage,
                                  max_epochs=2, owner="me", yield_after_end=True)

    def result(epoch: int) -> dict:
        return {METRIC: 0.1 * epoch, "training_iteration": epoch, "best_epoch": epoch,
                "time_total_s": 1.0}

    assert searcher.suggest("a") and searcher.suggest("b")
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.user_attrs["tune_trial_id"] for t in study.trials] == ["a", "b"]
    assert [t.user_attrs["proposed_by"] for t in study.trials] == ["sampler", "sampler"]
    reads = searcher._ot_study._storage
    reads.get_trial = lambda *args: pytest.fail("read back a trial this driver asked")
    searcher.on_trial_result("a", result(1))
    del reads.get_trial
    searcher.on_trial_complete("a", result(1))
    assert searcher.suggest("c") is None  # b is live: a trial waits for the freed slot
    assert searcher.suggest("c")
    searcher.on_trial_complete("b", result(2))
    searcher.on_trial_complete("c", result(2))
    assert searcher.suggest("d")  # nothing live: Tune would block, so no yield
    by_id = {t.user_attrs["tune_trial_id"]: t for t in
             optuna.load_study(study_name="s", storage=storage).trials}
    assert by_id["a"].user_attrs["stopped_early"] is True and by_id["a"].intermediate_values
    assert by_id["b"].user_attrs == {"owner": "me", "tune_trial_id": "b", "epochs": 2,
                                     "proposed_by": "sampler", "stopped_early": False,
                                     "best_epoch": 2, "errored": False}
    assert by_id["b"].state == optuna.trial.TrialState.COMPLETE and by_id["b"].value == 0.2


def test_the_startup_phase_is_a_third_of_the_budget_at_least_three():
    assert [startup_trials(n) for n in (1, 8, 9, 24, 100)] == [3, 3, 3, 8, 33]


def run_study(sampler, strategy="unfrozen", n=10):
    """The strategy's space under `sampler`, scored by a smooth function of lr and batch."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    space = get_space(strategy, SpaceContext())
    for _ in range(n):
        trial = study.ask()
        values = to_trial_values({**trial.params, **(space(trial) or {}), **trial.params})
        config = TrialConfig.from_dict(values)
        study.tell(trial, -abs(config.lr - 0.01) - config.batch_size / 1e4)
    return study


@pytest.mark.parametrize("name", SEARCHERS)
def test_every_searcher_is_seeded(name):
    first = [t.params for t in run_study(make_sampler(name, 8, seed=3), n=5).trials]
    again = [t.params for t in run_study(make_sampler(name, 8, seed=3), n=5).trials]
    other = [t.params for t in run_study(make_sampler(name, 8, seed=4), n=5).trials]
    assert first == again and first != other


def test_tpe_proposes_every_trial_after_the_startup_ones():
    samples = 9
    study = run_study(make_sampler("tpe", samples, seed=0), n=samples)
    by = [proposed_by(t) for t in study.trials]
    start = startup_trials(samples)
    assert by == ["sampler"] * start + ["model"] * (samples - start)


def test_a_restored_searcher_leaves_alone_a_trial_the_study_already_holds(tmp_path):
    """The driver told the study a trial's end and was killed before Tune saved its state: the
    restored searcher (Tune's pickle of its state) sees that trial end again, perhaps after a
    rerun epoch. Optuna refuses to change a finished trial; the study keeps its first end."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")

    def searcher() -> MarkedOptunaSearch:
        return MarkedOptunaSearch(space=get_space("scratch", SpaceContext(max_epochs=3)),
                                  metric=METRIC, mode="max", study_name="s", storage=storage,
                                  max_epochs=3, owner=str(tmp_path))

    def result(value: float, epoch: int) -> dict:
        return {METRIC: value, "training_iteration": epoch, "best_epoch": epoch,
                "time_total_s": 1.0}

    killed = searcher()
    killed.suggest("t1")
    killed.on_trial_result("t1", result(0.4, 1))
    killed.save(str(tmp_path / "searcher-state.pkl"))  # Tune's last saved state
    killed.on_trial_result("t1", result(0.5, 2))
    killed.on_trial_complete("t1", result(0.5, 2))  # then the driver dies

    restored = searcher()
    restored.restore(str(tmp_path / "searcher-state.pkl"))
    restored.on_trial_result("t1", result(0.45, 2))  # the rerun epoch
    restored.on_trial_complete("t1", result(0.45, 2))

    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.value == 0.5 and trial.intermediate_values == {1: 0.4, 2: 0.5}
    assert trial.user_attrs["tune_trial_id"] == "t1" and trial.user_attrs["epochs"] == 2


def test_a_trial_killed_while_its_parameters_are_sampled_is_still_closed(tmp_path):
    """The driver dies after asking the study and before every parameter is written: the trial
    already names its owner, so the driver that resumes the experiment closes it as orphaned,
    and a trial another driver of a shared study is running stays open."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")

    def dies_midway(trial: optuna.Trial) -> dict:
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        raise KeyboardInterrupt  # stands in for the SIGKILL between two suggest calls

    def searcher(owner: str, space) -> MarkedOptunaSearch:
        return MarkedOptunaSearch(space=space, metric=METRIC, mode="max", study_name="s",
                                  storage=storage, max_epochs=3, owner=owner)

    with pytest.raises(KeyboardInterrupt):
        searcher("experiments/mine", dies_midway).suggest("t1")
    searcher("experiments/theirs", lambda t: {"wd": t.suggest_float("wd", 0.0, 1.0)}).suggest("t2")

    assert close_orphans(storage, "s", "experiments/mine") == 1
    mine, theirs = optuna.load_study(study_name="s", storage=storage).trials
    assert mine.state == optuna.trial.TrialState.FAIL and mine.user_attrs["orphaned"] is True
    assert theirs.state == optuna.trial.TrialState.RUNNING
