"""The task registry: the built-in tasks build deterministically with disjoint splits, bad task files give one
clear error naming the field (and line), the README's example task loads and builds, and a fuzz test throws
malformed YAML and wrong types at the loader."""

from __future__ import annotations

import ast
import copy
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from acdc.errors import AcdcError, InputError
from acdc.metrics import logit_diff, prob_diff, task_metric
from acdc.task import Task, TaskFileError, builtin_dir, get_task, list_tasks, parse_task_text, task_from_text

ROOT = Path(__file__).resolve().parent.parent
IOI_TEXT = (builtin_dir() / "ioi.yaml").read_text()


def test_builtin_tasks_listed():
    assert {"ioi", "induction", "refusal"} <= set(list_tasks())
    for name in list_tasks():
        t = get_task(name)
        assert t.name == name and t.default_model.startswith("zoo:")
        assert t.spec.models.written_for, "each built-in task names the real models it was written for"


@pytest.mark.parametrize("name", ["ioi", "refusal", "induction"])
def test_builds_200_pairs_deterministically(name, words_model, toy_induction):
    model = toy_induction if name == "induction" else words_model
    t = get_task(name)
    a = t.build(model, 200, seed=7)
    b = t.build(model, 200, seed=7)
    c = t.build(model, 200, seed=8)
    assert len(a) == 200 and a.clean.shape == a.corrupt.shape == a.positions.shape
    assert torch.equal(a.clean, b.clean) and torch.equal(a.corrupt, b.corrupt) and torch.equal(a.answers, b.answers)
    assert not torch.equal(a.clean, c.clean)
    assert bool(a.positions.any(1).all())
    assert not torch.equal(a.clean, a.corrupt)
    if a.wrong is not None:  # answers and wrong answers never overlap at a read position
        ans = a.answers[a.positions].reshape(len(a), -1)
        wrong = a.wrong[a.positions].reshape(len(a), -1)
        assert not bool((ans.unsqueeze(-1) == wrong.unsqueeze(-2)).any())
    if a.lengths is not None:  # right padding: the metric reads each prompt's last real token
        last = a.positions.float().argmax(1)
        if a.metric != "logprob":
            assert torch.equal(last, a.lengths - 1)


@pytest.mark.parametrize("name", ["ioi", "refusal", "induction"])
def test_splits_are_disjoint(name, words_model, toy_induction):
    model = toy_induction if name == "induction" else words_model
    t = get_task(name)
    n = 60 if name == "refusal" else 150
    rows = {}
    for split in ("train", "validation", "test"):
        d = t.build(model, n, seed=0, split=split)
        rows[split] = {tuple(r.tolist()) for r in d.clean}
    assert not rows["train"] & rows["validation"]
    assert not rows["train"] & rows["test"]
    assert not rows["validation"] & rows["test"]


def test_ioi_counterfactuals(words_model):
    t = get_task("ioi")
    abc = t.build(words_model, 50, counterfactual="abc")
    flip = t.build(words_model, 50, counterfactual="s2-io-flip")
    assert abc.texts is not None and flip.texts is not None
    names = set(yaml.safe_load(IOI_TEXT)["dataset"]["words"]["names"])
    for clean, corrupt in abc.texts:
        cn = [w for w in re.findall(r"\w+", clean) if w in names]
        kn = [w for w in re.findall(r"\w+", corrupt) if w in names]
        assert len(cn) == len(kn) == 3 and len(set(kn)) == 3 and not set(kn) & set(cn)
    for clean, corrupt in flip.texts:
        cn = [w for w in re.findall(r"\w+", clean) if w in names]
        kn = [w for w in re.findall(r"\w+", corrupt) if w in names]
        io = next(w for w in cn if cn.count(w) == 1)
        assert kn[:2] == cn[:2] and kn[2] == io
    with pytest.raises(InputError, match="no counterfactual 'nope'"):
        t.build(words_model, 5, counterfactual="nope")


def test_induction_counterfactual_variants(toy_induction):
    t = get_task("induction")
    fresh = t.build(toy_induction, 64, counterfactual="fresh")
    half = t.build(toy_induction, 64, counterfactual="second-half")
    assert torch.equal(fresh.clean, half.clean)
    # second-half keeps everything before the repeat; fresh changes the first occurrence too
    first_pos = half.positions.float().argmax(1)
    for i in range(8):
        p = int(first_pos[i])
        assert torch.equal(half.corrupt[i, :p], half.clean[i, :p])
        assert not torch.equal(fresh.corrupt[i, 1:p], fresh.clean[i, 1:p])


def test_refusal_datasets(words_model):
    t = get_task("refusal")
    syn = t.build(words_model, 40)
    assert syn.info["dataset"] == "synthetic" and syn.answers.dim() == 3 and syn.wrong is not None
    assert syn.texts and all("?" in c or "." in c for c, _ in syn.texts)
    tok = words_model.tokenizer
    first = tok.convert_ids_to_tokens(syn.clean[0, : int(syn.lengths[0])].tolist())
    assert first[:2] == ["<bos>", "<user>"] and first[-1] == "<assistant>"  # rendered in the chat template
    cur = t.build(words_model, dataset="curated", split="test")
    assert cur.info["dataset"] == "curated" and len(cur) >= 15
    lines = (builtin_dir() / "refusal_pairs.jsonl").read_text().splitlines()
    assert len(lines) >= 100


def test_answer_sets_in_metrics():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 5, 11, generator=g)
    pos = torch.zeros(4, 5, dtype=torch.bool)
    pos[:, -1] = True
    ans = torch.full((4, 5, 2), -1)
    ans[..., 0] = 1
    ans[:2, :, 1] = 2
    wrong = torch.full((4, 5, 1), 3)
    got = logit_diff(logits, pos, ans, wrong)
    last = logits[..., -1, :]
    want = torch.cat([last[:, :2, 1:3].logsumexp(-1), last[:, 2:, 1]], 1) - last[..., 3]
    assert torch.allclose(got, want, atol=1e-6)
    p = last.softmax(-1)
    want_p = torch.cat([p[:, :2, 1] + p[:, :2, 2], p[:, 2:, 1]], 1) - p[..., 3]
    assert torch.allclose(prob_diff(logits, pos, ans, wrong), want_p, atol=1e-6)


# ---- errors -----------------------------------------------------------------------------------------------------
def _mutated(old: str, new: str) -> str:
    assert old in IOI_TEXT
    return IOI_TEXT.replace(old, new, 1)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (_mutated("metric:\n", "metrics: 1\nmetric:\n"), r"ioi\.yaml:\d+: metrics: unknown field"),
        (_mutated("n: 200", "n: lots"), r":\d+: defaults\.n: input should be a valid integer"),
        (_mutated("    PLACE: places", "    PLACE: venues"), r":\d+: dataset\.slots\.PLACE: word list 'venues' is not "
                                                           "defined"),
        (_mutated("answer: {slot: IO}", "answer: {slot: X}"), r"answer\.slot: 'X' is not a slot"),
        (_mutated("default_counterfactual: abc", "default_counterfactual: abd"), r"'abd' is not one of the "
                                                                                  "counterfactuals"),
        (_mutated('resample: ["IO", "S#1", "S#2"]', 'resample: ["IO", "S#3"]'), r"'S#3': templates\[0\] mentions S 2"),
        (_mutated("kind: templates", "kind: template"), r"dataset: 'kind' must be one of"),
        (_mutated("name: ioi", "name: ioi\nname: ioi2"), r":\d+: duplicate key 'name'"),
        ("name: [unclosed", r"not valid YAML"),
        ("- just\n- a list", r"must be a YAML mapping"),
    ],
)
def test_bad_task_files_give_one_clear_error(text, pattern, tmp_path):
    f = tmp_path / "ioi.yaml"
    f.write_text(text)
    with pytest.raises(TaskFileError, match=pattern) as e:
        get_task(f)
    assert "\n" not in str(e.value)


def test_line_numbers_point_at_the_field(tmp_path):
    text = _mutated("    PLACE: places", "    PLACE: venues")
    line = next(i for i, x in enumerate(text.splitlines(), 1) if "PLACE: venues" in x)
    with pytest.raises(TaskFileError, match=rf"ioi\.yaml:{line}: "):
        parse_task_text(text, "ioi.yaml")


def test_tokenizer_checks_name_the_field(words_model, tmp_path):
    two = task_from_text(_mutated("names: [Mary,", 'names: ["Mary Ann",'), builtin_dir())
    with pytest.raises(InputError, match=r"dataset\.words\.names\[0\]: 'Mary Ann' is not a single token"):
        two.build(words_model, 5)
    unk = task_from_text(_mutated("names: [Mary,", "names: [Zebediah,"), builtin_dir())
    with pytest.raises(InputError, match=r"names\[0\]: 'Zebediah' is not in this model's vocabulary"):
        unk.build(words_model, 5)
    # objects resampled into a list whose words have other token lengths: the lengths cannot match
    text = _mutated("  abc:\n", '  objs:\n    resample: {OBJECT: long}\n  abc:\n')
    text = text.replace("    objects: [", '    long: ["two words", "three more words"]\n    objects: [', 1)
    t = task_from_text(text, builtin_dir())
    with pytest.raises(InputError, match=r"templates\[\d+\]: counterfactual rule could not produce a prompt of the "
                                         r"clean prompt's token length"):
        t.build(words_model, 5, counterfactual="objs")
    # explicit pairs of different lengths: error naming the file line, or dropped when the task says so
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"clean": "When Mary and John went", "counterfactual": "When Mary went"}) + "\n")
    ptext = (
        "name: p\ndescription: d\nmodels: {default: zoo:toy-ioi}\n"
        "dataset: {kind: pairs, path: pairs.jsonl}\n"
        "answer: {tokens: [Mary]}\nwrong: {tokens: [John]}\nmetric: {name: logit_diff}\n"
        "splits: {train: 0.98, validation: 0.01, test: 0.01}\n"
    )
    (tmp_path / "p.yaml").write_text(ptext)
    with pytest.raises(TaskFileError, match=r"pairs\.jsonl:1: clean and counterfactual tokenize to different"):
        get_task(tmp_path / "p.yaml").build(words_model, 1)
    (tmp_path / "p.yaml").write_text(ptext.replace("path: pairs.jsonl", "path: pairs.jsonl, on_length_mismatch: drop"))
    with pytest.raises(InputError, match="has 0 usable pair"):
        get_task(tmp_path / "p.yaml").build(words_model)
    pairs.write_text("{not json\n")
    with pytest.raises(TaskFileError, match=r"pairs\.jsonl:1: not valid JSON"):
        get_task(tmp_path / "p.yaml").build(words_model)


def test_unknown_task_and_split(words_model):
    with pytest.raises(InputError, match="unknown task 'nope'; built-in tasks: induction, ioi, refusal"):
        get_task("nope")
    with pytest.raises(InputError, match="no task file at"):
        get_task("missing.yaml")
    with pytest.raises(InputError, match="unknown split"):
        get_task("ioi").build(words_model, 5, split="dev")


# ---- README example ---------------------------------------------------------------------------------------------
def readme_task() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- example-task -->\s*```yaml\n(.*?)```", text, re.S)
    assert m, "README must contain the example task (```yaml block after <!-- example-task -->)"
    return m.group(1)


def test_readme_example_task_loads_and_builds(tmp_path, toy_ioi):
    f = tmp_path / "ioi_mini.yaml"
    f.write_text(readme_task())
    t = get_task(f)
    d = t.build(toy_ioi, 40, seed=1)
    assert len(d) == 40 and d.clean.shape == d.corrupt.shape
    with torch.no_grad():
        clean = task_metric(d, toy_ioi(d.clean)).mean()
        corrupt = task_metric(d, toy_ioi(d.corrupt)).mean()
    assert clean > corrupt + 1.0


# ---- fuzz -------------------------------------------------------------------------------------------------------
junk = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 300) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(x, prefix=()):
    yield prefix
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _paths(v, (*prefix, i))


def _load_or_error(text: str):
    try:
        return parse_task_text(text, "fuzz.yaml")
    except TaskFileError as e:
        assert "\n" not in str(e)
        return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text(text):
    _load_or_error(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_fields(data, words_model):
    base = yaml.safe_load(IOI_TEXT if data.draw(st.booleans()) else (builtin_dir() / "refusal.yaml").read_text())
    doc = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        path = data.draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[data.draw(st.text(min_size=1, max_size=6))] = data.draw(junk)
        else:
            parent[path[-1]] = data.draw(junk)
    got = _load_or_error(yaml.safe_dump(doc))
    event("rejected by validation" if got is None else "valid")
    if got is not None:  # a mutation that still validates must build or fail with the project's own error
        spec, lines = got
        try:
            Task(spec, lines, path=builtin_dir() / "fuzz.yaml").build(words_model, 4)
            event("built")
        except AcdcError:
            event("build refused with the project's error")


# ---- CLI --------------------------------------------------------------------------------------------------------
def test_cli_tasks_list_show_validate(tmp_path, toy_induction):
    from acdc.cli.main import main

    r = CliRunner().invoke(main, ["tasks", "list"])
    assert r.exit_code == 0 and "ioi" in r.output and "zoo:toy-refusal" in r.output
    r = CliRunner().invoke(main, ["tasks", "show", "induction", "--n", "16"])
    assert r.exit_code == 0, r.output
    assert "example pair" in r.output and "clean tokens" in r.output and "baseline on 16 prompts" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(_mutated("n: 200", "n: lots"))
    r = CliRunner().invoke(main, ["tasks", "validate", str(bad)])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "defaults.n" in r.output
    good = tmp_path / "good.yaml"
    good.write_text(IOI_TEXT)
    r = CliRunner().invoke(main, ["tasks", "validate", str(good)])
    assert r.exit_code == 0 and "ok:" in r.output


def test_name_beats_a_same_named_folder(tmp_path, monkeypatch):
    (tmp_path / "ioi").mkdir()  # a folder called ioi in the working directory must not shadow the built-in task
    monkeypatch.chdir(tmp_path)
    assert get_task("ioi").builtin
    f = tmp_path / "ioi.yaml"
    f.write_text(IOI_TEXT.replace("name: ioi", "name: my-ioi"))
    assert get_task("ioi.yaml").name == "my-ioi" and get_task(str(f)).name == "my-ioi"


# ---- layering -----------------------------------------------------------------------------------------------------
def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import statement in ``path``, at any depth (function-level ones too)."""
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
    return out


def test_the_data_layer_never_imports_the_zoo():
    """Data flows one way: tasks, types and metrics must not depend on the zoo's trainers."""
    files = [*sorted((ROOT / "acdc" / "task").glob("*.py")), ROOT / "acdc" / "types.py", ROOT / "acdc" / "metrics.py"]
    assert len(files) > 3
    bad = [(f.relative_to(ROOT).as_posix(), mod) for f in files for mod, _ in _imports(f)
           if mod == "acdc.zoo" or mod.startswith("acdc.zoo.")]
    assert not bad, bad


def test_task_and_zoo_modules_import_no_private_names():
    """No module of acdc/task or acdc/zoo (nor their tests) imports another module's underscore names."""
    files = [*sorted((ROOT / "acdc" / "task").glob("*.py")), *sorted((ROOT / "acdc" / "zoo").glob("*.py")),
             *sorted((ROOT / "tests").glob("test_zoo*.py")), ROOT / "tests" / "test_tasks.py"]
    bad = [(f.relative_to(ROOT).as_posix(), mod, name) for f in files for mod, names in _imports(f)
           if mod.startswith("acdc") for name in names if name.startswith("_")]
    assert not bad, bad
