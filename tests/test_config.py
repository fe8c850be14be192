"""Config composition: files, overrides, strategy replacement, hashing, and every shipped YAML."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dlm_decode import ConfigError, PluginError, load_config
from dlm_decode.decoder import Decoder
from dlm_decode.hookspecs import hookimpl
from dlm_decode.models.dry_run import dry_run
from dlm_decode.plugins import build_registry

from stand_ins import PROMPTS as STAND_IN_PROMPTS
from stand_ins import REMOTE, expected_texts

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(path.relative_to(ROOT) for path in (ROOT / "configs").rglob("*.yaml"))


def test_the_shipped_configs_are_found():
    assert len(CONFIGS) >= 16, CONFIGS  # decoders, models, experiments


@pytest.mark.parametrize("path", CONFIGS, ids=str)
def test_every_shipped_config_validates(path):
    resolved = load_config(path)
    assert len(resolved.hash) == 12


def test_later_files_and_overrides_win(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("generation: {max_new_tokens: 20, seed: 3}\ndecoder: {window: {name: blocks, size: 4}}\n")
    top = tmp_path / "top.yaml"
    top.write_text("generation: {max_new_tokens: 30}\n")
    resolved = load_config([base, top], ["generation.seed=9"])
    assert resolved.config.generation.max_new_tokens == 30
    assert resolved.config.generation.seed == 9
    assert resolved.strategies["window"][1].size == 4


def test_naming_another_strategy_replaces_the_section():
    resolved = load_config("configs/decoders/llada.yaml", ["decoder.verification=left_to_right"])
    name, params = resolved.strategies["verification"]
    assert name == "left_to_right" and params.k == 1


def test_same_strategy_name_merges_parameters():
    resolved = load_config("configs/decoders/llada.yaml", ["decoder.verification.score=margin"])
    name, params = resolved.strategies["verification"]
    assert name == "topk" and params.score.value == "margin" and params.tokens_per_step == 1


def test_composing_a_strategy_file_swaps_one_role_only():
    base = load_config("configs/decoders/llada.yaml")
    swapped = load_config(["configs/decoders/llada.yaml", "configs/strategies/proposal/sample-t0.5.yaml"])
    assert swapped.strategies["proposal"][0] == "sample"
    for role in ("window", "cache", "verification"):
        assert swapped.strategies[role] == base.strategies[role]
    assert swapped.hash != base.hash


def test_hash_is_stable_and_follows_the_resolved_values():
    a = load_config("configs/decoders/llada.yaml")
    b = load_config("configs/decoders/llada.yaml", ["generation.seed=0"])
    c = load_config("configs/decoders/llada.yaml", ["generation.seed=1"])
    assert a.hash == b.hash != c.hash
    assert a.to_dict()["decoder"]["verification"]["name"] == "topk"


@pytest.mark.parametrize("seed", [-(2**63), -1, 0, 2**64 - 1])
def test_every_seed_the_generator_accepts_validates(seed):
    assert load_config({}, [f"generation.seed={seed}"]).config.generation.seed == seed


@pytest.mark.parametrize("device", ["cpu", "cpu:0", "cuda", "cuda:0", "cuda:12", "mps", "auto"])
def test_device_strings_torch_accepts_validate(device):
    assert load_config({}, [f"model.dllm.device={device}"]).config.model.dllm.device == device


def test_model_ar_null_removes_the_ar_model():
    """``model.ar`` is optional, so null is a value for it (unlike ``model.dllm``, which null would reset)."""
    with_ar = load_config("configs/models/embedded-ar.yaml")
    assert with_ar.config.model.ar is not None
    assert load_config("configs/models/embedded-ar.yaml", ["model.ar=null"]).config.model.ar is None


def _reference_tables(role: str) -> dict[str, dict[str, str]]:
    """strategy -> {key: default cell} from the ``decoder.<role>`` table of docs/configuration.md's reference."""
    text = Path("docs/configuration.md").read_text(encoding="utf-8")
    section = text.split(f"### `decoder.{role}`", 1)[1].split("\n#", 1)[0]
    tables: dict[str, dict[str, str]] = {}
    strategy = None
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.replace("\\|", "/").strip().strip("|").split("|")]
        if not line.startswith("| ") or len(cells) < 5 or cells[0] == "strategy":
            continue
        strategy = cells[0].split()[0].strip("`") if cells[0] else strategy
        keys = tables.setdefault(strategy, {})
        if cells[1]:
            keys[cells[1].strip("`")] = cells[3]
    return tables


def _yaml_cell(value) -> str:
    value = getattr(value, "value", value)  # enums are written as their value
    return "`null`" if value is None else f"`{str(value).lower() if isinstance(value, bool) else value}`"


def test_the_configuration_reference_lists_every_strategy_and_field(strategy_registry):
    import dataclasses

    for spec in strategy_registry:
        documented = _reference_tables(spec.role)
        assert spec.name in documented, f"{spec.role} strategy {spec.name!r} missing from docs/configuration.md"
        fields = {
            f.name: _yaml_cell(f.default if f.default is not dataclasses.MISSING else f.default_factory())
            for f in dataclasses.fields(spec.config_cls)
        }
        assert documented[spec.name] == fields, f"{spec.role} strategy {spec.name!r}: keys or defaults differ"


@pytest.mark.parametrize(
    ("overrides", "key", "hint"),
    [
        (["decoder.verification=bogus"], "decoder.verification.name", "registered: apd"),
        (["generation.max_new_tokens=abc"], "generation.max_new_tokens", "type"),
        (["generation.max_new_tokens=0"], "generation.max_new_tokens", "at least 1"),
        (["generation.max_new_tokens=-5"], "generation.max_new_tokens", "at least 1"),
        (["generation.max_new_tokns=5"], "generation.max_new_tokns", "valid keys: max_new_tokens"),
        (["decoder.verification.score=best"], "decoder.verification.score", "confidence"),
        (["decoder.proposal=sample", "decoder.proposal.top_p=1.5"], "decoder.proposal.top_p", "(0, 1]"),
        (["decoder.proposal=sample", "decoder.proposal.temperature=.inf"], "decoder.proposal.temperature", "finite"),
        (["decoder.proposal=sample", "decoder.proposal.temperature=nan"], "decoder.proposal.temperature", "finite"),
        (["decoder.proposal.temperature=0.5"], "decoder.proposal.temperature", "takes no parameters"),
        (["decoder.window=blocks", "decoder.window.size=0"], "decoder.window.size", "at least 1"),
        (["decoder.verifier=topk"], "decoder.verifier", "the roles are"),
        (["model.dllm.dtype=int4"], "model.dllm.dtype", "float32"),
        (["modle.dllm.path=x"], "modle", "top-level keys"),
        (["generation.max_new_tokens"], "generation.max_new_tokens", "key=value"),
        (
            ["decoder.verification.tokens_per_step=2", "decoder.verification.steps_per_block=4"],
            "decoder.verification.tokens_per_step",
            "only one",
        ),
        (["decoder.verification.schedule=dream"], "decoder.verification.steps_per_block", "Dream's `steps`"),
        (["decoder.verification.eps=0.01"], "decoder.verification.eps", "schedule dream"),
        (
            ["decoder.verification=wino", "decoder.verification.revoke_limit=none"],
            "decoder.verification.revoke_limit",
            "progress",
        ),
        (["model.dllm.implementation=native_code"], "model.dllm.implementation", "native or remote"),
        (["generation.seed=18446744073709551616"], "generation.seed", "manual_seed accepts"),
        (["generation.seed=-9223372036854775809"], "generation.seed", "manual_seed accepts"),
        (["decoder=foo"], "decoder", "mapping of roles (window, cache, proposal, verification)"),
        (["decoder=null"], "decoder", "mapping of roles"),
        (["decoder=[1]"], "decoder", "mapping of roles"),
        (["decoder=null", "decoder.window=blocks"], "decoder", "mapping of roles"),
        (["model.dllm=null"], "model.dllm", "leave it out to keep the defaults"),
        (["model.dllm.dtype=bfloat16", "model.dllm=null"], "model.dllm", "must be a mapping"),
        (["model=null"], "model", "must be a mapping"),
        (["generation=null"], "generation", "must be a mapping"),
        (["model.dllm.device=cpu:x"], "model.dllm.device", "cuda:N"),
        (["model.dllm.device=cuda:x"], "model.dllm.device", "cuda:N"),
        (["model.dllm.device=cuda:-1"], "model.dllm.device", "cuda:N"),
        (["model.dllm.device=cuda0"], "model.dllm.device", "cuda:N"),
    ],
)
def test_bad_configs_name_the_key_and_what_it_accepts(overrides, key, hint):
    with pytest.raises(ConfigError) as info:
        load_config({}, overrides)
    message = str(info.value)
    assert f"`{key}`" in message and hint in message
    assert info.value.key == key


@pytest.mark.parametrize("verification", ["topk", "klass", "prophet"])
@pytest.mark.parametrize(
    ("schedule", "key", "hint"),
    [
        (["steps_per_block=0"], "steps_per_block", "must be >= 1 or null, got 0"),
        (["tokens_per_step=0"], "tokens_per_step", "must be >= 1, got 0"),
        (["steps_per_block=4", "tokens_per_step=2"], "tokens_per_step", "set only one of steps_per_block"),
    ],
)
def test_every_per_block_step_schedule_is_checked_alike(verification, schedule, key, hint):
    """topk, klass and prophet validate ``steps_per_block`` and ``tokens_per_step`` with one shared check."""
    overrides = [f"decoder.verification={verification}", *(f"decoder.verification.{item}" for item in schedule)]
    with pytest.raises(ConfigError) as info:
        load_config({}, overrides)
    assert info.value.key == f"decoder.verification.{key}" and hint in str(info.value)


@pytest.mark.parametrize(
    ("content", "pattern", "key"),
    [
        ("decoder: null\n", r"`decoder`: must be a mapping of roles.*fix", "decoder"),
        (None, r"no config file at .*config.yaml", None),
        ("- a\n- b\n", r"mapping at the top level", None),
    ],
    ids=["null-decoder-section", "missing-file", "not-a-mapping"],
)
def test_a_bad_config_file_is_named(tmp_path, content, pattern, key):
    path = tmp_path / "config.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match="(?s)" + pattern) as info:
        load_config(path)
    if key is not None:
        assert info.value.key == key


def test_the_paper_setting_is_what_the_experiment_config_says():
    config = load_config("configs/experiments/apd-dream-qwen.yaml")
    strategies = {role: params for role, (_, params) in config.strategies.items()}
    assert strategies["verification"].mixture_weight == 0.7  # R
    assert strategies["cache"].window == 16  # W
    assert strategies["window"].max_lookahead == 100  # M
    assert (strategies["proposal"].temperature, strategies["proposal"].top_p) == (0.2, 0.95)
    assert config.config.generation.max_new_tokens == 256
    model = config.config.model
    assert (model.dllm.path, model.ar.path) == ("Dream-org/Dream-v0-Instruct-7B", "Qwen/Qwen2.5-0.5B")
    assert not model.dllm.trust_remote_code, "remote code is the user's decision, on the command line"
    llada = load_config(["configs/decoders/llada.yaml", "configs/models/llada-8b-instruct.yaml"]).config.model.dllm
    assert (llada.family, llada.dtype, llada.device) == ("llada", "bfloat16", "auto")
    pair = load_config(
        ["configs/decoders/apd.yaml", "configs/models/dream-7b-instruct.yaml", "configs/models/qwen2.5-0.5b.yaml"]
    ).config.model
    assert (pair.dllm.family, pair.ar.path) == ("dream", "Qwen/Qwen2.5-0.5B")


def test_the_experiment_config_runs_on_the_stand_ins(stand_ins):
    paths = [f"model.dllm.path={stand_ins['dream_spike']}", *REMOTE, f"model.ar.path={stand_ins['qwen']}"]
    report = dry_run("configs/experiments/apd-dream-qwen.yaml", paths, prompts=["hi"])
    assert report.checks() == {"context"}, "256 new tokens do not fit the stand-ins' 256 positions"
    decoder = Decoder.from_config("configs/experiments/apd-dream-qwen.yaml", [*paths, "generation.max_new_tokens=12"])
    assert next(decoder.dllm.model.parameters()).dtype == torch.bfloat16
    out = decoder.generate(STAND_IN_PROMPTS)
    assert out.texts == expected_texts(decoder.dllm, STAND_IN_PROMPTS, 12)
    assert all(s.commits_per_step == [12] for s in out.stats), "M = 100 covers the canvas; the spike is accepted"


@pytest.mark.parametrize(
    ("override", "where"),
    [
        (
            "decoder.verification={name: topk",
            "did not find expected ',' or '}' while parsing a flow mapping, at the end of the value",
        ),
        ("decoder.verification={name: topk}}", "did not find expected <document start>, at column 13 of the value"),
        (
            "decoder.verification={name: topk, k: [1, }",
            "did not find expected node content while parsing a flow node, at column 21 of the value",
        ),
        (
            'generation.seed="1',
            "found unexpected end of stream while scanning a quoted scalar, at the end of the value",
        ),
    ],
    ids=["unclosed-brace", "extra-brace", "unclosed-bracket", "unclosed-quote"],
)
def test_a_malformed_override_value_names_the_override_the_value_and_where_it_breaks(override, where):
    key, _, value = override.partition("=")
    with pytest.raises(ConfigError) as info:
        load_config("configs/decoders/llada.yaml", [override])
    assert info.value.key == key
    message = str(info.value)
    assert f"cannot parse the value {value!r} of the override {override!r}: {where}" in message
    assert "fix: write the value as YAML, closing every `{` and `[`" in message


def test_a_strategy_that_needs_a_key_is_refused_when_the_config_leaves_it_null():
    """APD declares that it needs ``model.ar``: the config is refused when composed, before any model loads."""
    load_config(["configs/decoders/apd.yaml"])  # the preset composes the AR model
    with pytest.raises(ConfigError) as info:
        load_config(["configs/decoders/apd.yaml"], ["model.ar=null"])
    assert info.value.key == "model.ar"
    assert str(info.value) == (
        "`model.ar`: the 'apd' verification strategy (decoder.verification.name=apd) needs it, "
        "but it is null\n  fix: set model.ar.path (e.g. embedded:ar), or compose "
        "configs/models/embedded-ar.yaml; or choose another verification strategy"
    )
    assert load_config(["configs/decoders/apd.yaml"], ["model.ar=null", "decoder.verification=topk"])


@dataclass
class _NoParams:
    pass


def _registry_needing(requires: dict[str, str]):
    """The built-in strategies plus a verification strategy ``needy`` declaring ``requires``."""

    class Needy:
        @staticmethod
        @hookimpl
        def dlm_register(registry) -> None:
            registry.add("verification", "needy", _NoParams, lambda config, context: None, requires=requires)

    return build_registry({"tests.needy": Needy})


@pytest.mark.parametrize(
    ("requires", "null", "pattern"),
    [
        (
            {"model.ar.path": "set model.ar.path"},
            "model.ar=null",
            r"`model.ar.path`: the 'needy' verification strategy .* is null\n  fix: set model.ar.path; or choose",
        ),
        (
            {"generation.max_steps": "set generation.max_steps=64"},
            "generation.max_steps=null",
            r"`generation.max_steps`: the 'needy' verification strategy .*\n  fix: set generation.max_steps=64;",
        ),
    ],
    ids=["key-under-a-null-section", "generation-key"],
)
def test_any_declared_requirement_is_checked(requires, null, pattern):
    registry = _registry_needing(requires)
    needy = ["decoder.verification=needy", "model.ar.path=embedded:ar", "generation.max_steps=64"]
    assert load_config({}, needy, registry=registry).strategies["verification"][0] == "needy"
    with pytest.raises(ConfigError, match=pattern):
        load_config({}, [*needy, null], registry=registry)


def test_a_requirement_that_is_no_config_key_is_the_plugins_mistake():
    with pytest.raises(
        PluginError,
        match=r"plugin tests.needy in dlm_register: verification strategy 'needy' "
        r"declares that it requires `model.arr`, which is not a config key",
    ):
        load_config({}, ["decoder.verification=needy"], registry=_registry_needing({"model.arr": "set it"}))
