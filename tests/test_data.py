"""Data records and readers: every kind of bad input is refused with file:line:field."""

import json

import pytest

from rlhfkit.data import Comparison, DataError, Ranking, Rating, read_records, write_jsonl
from rlhfkit.data.io import read_jsonl


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"prompt": "p", "chosen": "a"', "malformed JSON"),
        (json.dumps({"prompt": "p", "chosen": "a"}), "field 'rejected': missing"),
        (json.dumps({"prompt": "p", "chosen": "  ", "rejected": "b"}), "field 'chosen': must not be empty"),
        (json.dumps({"prompt": "p", "chosen": 3, "rejected": "b"}), "field 'chosen': must be a string or a list"),
        (json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "tie": "yes"}), "field 'tie'"),
        (json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}), "identical"),
        (
            json.dumps({"prompt": [{"role": "wizard", "content": "hi"}], "chosen": "a", "rejected": "b"}),
            "field 'prompt.0.role'",
        ),
        ("[1, 2]", "expected a JSON object"),
        # Python's json reads NaN and Infinity: a NaN margin made the Bradley-Terry loss NaN
        ('{"prompt": "p", "chosen": "a", "rejected": "b", "margin": NaN}', "field 'margin': nan is not a finite"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b", "margin": Infinity}', "field 'margin': inf is not a finite"),
    ],
)
def test_bad_comparison_rows_name_file_line_and_field(tmp_path, bad_line, message):
    path = write_lines(tmp_path / "prefs.jsonl", [GOOD, bad_line, GOOD])
    with pytest.raises(DataError) as err:
        read_records(path, "comparison")
    assert f"{path}:2:" in str(err.value)
    assert message in str(err.value)


def test_bytes_that_are_not_utf8_name_their_line_and_a_skipping_read_keeps_the_others(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_bytes((GOOD + "\n").encode() + b'{"prompt": "\xff\xfe"}\n' + (GOOD + "\n").encode())
    with pytest.raises(DataError, match=r"prefs.jsonl:2: not UTF-8 text \(byte 0xff at column 13\)"):
        read_records(path, "comparison")
    records, skipped = read_records(path, "comparison", skip_invalid=True)
    assert len(records) == 2 and [s.location for s in skipped] == [f"{path}:2"]
    with pytest.raises(DataError, match=r"prefs.jsonl:2: not UTF-8 text"):
        read_jsonl(path)
    (tmp_path / "all.json").write_bytes(b"[\xff]")
    with pytest.raises(DataError, match=r"all.json: not UTF-8 text \(byte 0xff at offset 1\)"):
        read_records(tmp_path / "all.json", "comparison")


def test_a_write_that_fails_leaves_no_partial_file_beside_its_target(tmp_path):
    (tmp_path / "out.jsonl").mkdir()  # the target is a folder
    with pytest.raises(IsADirectoryError):
        write_jsonl(tmp_path / "out.jsonl", [{"a": 1}])
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


@pytest.mark.parametrize(
    "kind, row, message",
    [
        ("rating", {"prompt": "p", "completion": "a", "rating": 1, "scale": 1}, "field 'scale': Input should be"),
        (
            "ranking",
            {"prompt": "p", "completions": ["same", "x", "same"], "ranking": [0, 1, 2]},
            "fields 'completions.0' and 'completions.2': are identical",
        ),
    ],
)
def test_a_rating_scale_of_one_level_and_a_ranking_of_one_text_twice_are_refused(tmp_path, kind, row, message):
    """A scale of 1 made the regression loss divide by zero (the reward model trained to NaN and was saved); a text
    ranked apart from itself is the identical pair a comparison already refuses."""
    path = write_lines(tmp_path / "x.jsonl", [json.dumps(row)])
    with pytest.raises(DataError, match=f"x.jsonl:1: {message}"):
        read_records(path, kind)


def test_resume_rows_drop_a_last_line_cut_short_and_name_any_other_bad_line(tmp_path):
    from rlhfkit.data.io import read_resume_rows

    path = tmp_path / "raw.jsonl"
    path.write_text('{"i": 0, "ab": [0.5]}\n{"i": 1, "ab": [0.7]}\n{"i": 2, "a')  # interrupted mid-line
    assert [r["i"] for r in read_resume_rows(path, ("i", "ab"))] == [0, 1]
    path.write_text('{"i": 0, "ab": [0.5]}\n{"i": 1\n{"i": 2, "ab": [0.7]}\n')
    with pytest.raises(DataError, match="raw.jsonl:2: malformed JSON"):
        read_resume_rows(path, ("i", "ab"))
    path.write_text('{"i": 0, "ab": [0.5]}\n[1]\n')
    with pytest.raises(DataError, match="raw.jsonl:2: not a row this run wrote \\(it needs i, ab\\)"):
        read_resume_rows(path, ("i", "ab"))


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: no valid records"):
        read_records(path, "comparison")


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_records(tmp_path / "nope.jsonl", "comparison")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown data format"):
        read_records(tmp_path / "x.csv", "comparison")


def test_skip_invalid_returns_what_was_skipped(tmp_path):
    path = write_lines(
        tmp_path / "p.jsonl", [GOOD, "{oops", json.dumps({"prompt": "p", "chosen": "a", "rejected": "a"}), GOOD]
    )
    records, invalid = read_records(path, "comparison", skip_invalid=True)
    assert len(records) == 2
    assert [r.location for r in invalid] == [f"{path}:2", f"{path}:3"]


def test_demonstration_forms_and_errors(tmp_path):
    rows = [
        {"prompt": "hi", "completion": "hello"},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]},
    ]
    path = tmp_path / "d.jsonl"
    write_jsonl(path, rows)
    records, _ = read_records(path, "demonstration")
    assert len(records) == 3
    write_jsonl(path, [{"messages": [{"role": "user", "content": "q"}]}])
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'messages': needs at least one assistant"):
        read_records(path, "demonstration")
    write_jsonl(path, [{"prompt": "q"}])
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'completion': missing"):
        read_records(path, "demonstration")


def test_json_parquet_and_datasets_folder_read_the_same_records(tmp_path):
    import datasets

    rows = [{"prompt": f"p{i}", "chosen": "good", "rejected": "bad", "tie": False} for i in range(5)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "a.parquet"))
    ds.save_to_disk(str(tmp_path / "folder"))
    results = [read_records(tmp_path / name, "comparison")[0] for name in ("a.json", "a.parquet", "folder")]
    assert results[0] == results[1] == results[2]
    assert results[0][3].prompt == "p3"


def test_json_location_names_the_item(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([json.loads(GOOD), {"prompt": "p", "chosen": "a"}]))
    with pytest.raises(DataError, match=r"a.json:item 2: field 'rejected': missing"):
        read_records(tmp_path / "a.json", "comparison")


def test_trl_implicit_prompt_conversations_are_split():
    """TRL's implicit-prompt preference rows carry the prompt inside chosen/rejected."""
    user = {"role": "user", "content": "What color is the sky?"}
    rec = Comparison.model_validate(
        {
            "chosen": [user, {"role": "assistant", "content": "It is blue."}],
            "rejected": [user, {"role": "assistant", "content": "It is green."}],
        }
    )
    assert [m.content for m in rec.prompt] == ["What color is the sky?"]
    assert rec.chosen[0].content == "It is blue." and rec.rejected[0].content == "It is green."


def test_rankings_and_ratings_are_validated():
    Ranking.model_validate({"prompt": "p", "completions": ["a", "b", "c"], "ranking": [2, 0, 1]})
    with pytest.raises(ValueError, match="field 'ranking'"):
        Ranking.model_validate({"prompt": "p", "completions": ["a", "b", "c"], "ranking": [0, 0, 1]})
    assert Rating.model_validate({"prompt": "p", "completion": "c", "rating": 4}).scale == 5
    assert Rating.model_validate({"prompt": "p", "completion": "c", "label": True}).label is True
    with pytest.raises(ValueError, match="outside the scale"):
        Rating.model_validate({"prompt": "p", "completion": "c", "rating": 9})
    with pytest.raises(ValueError, match="exactly one of"):
        Rating.model_validate({"prompt": "p", "completion": "c"})


def test_a_resume_rewrite_cut_short_loses_none_of_the_rows_saved_before(tmp_path, monkeypatch):
    """The rows an interrupted run kept are rewritten before appending; a second interruption inside that rewrite
    (here: the third row's write fails) leaves the file as it was, not truncated to the rows written so far."""
    import json

    from rlhfkit.data import io

    path = tmp_path / "raw.jsonl"
    rows = [{"i": i} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"i": 5, "cut')
    calls = []

    def dumps(row, **kwargs):
        calls.append(row)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return json.dumps(row, **kwargs)

    monkeypatch.setattr(io.json, "dumps", dumps)
    with pytest.raises(KeyboardInterrupt):
        io.resume_writer(path, rows)
    monkeypatch.undo()
    assert path.read_text().splitlines()[:5] == [json.dumps(r) for r in rows]
    assert [p.name for p in tmp_path.iterdir()] == ["raw.jsonl"]  # and no temporary file left beside it
    with io.resume_writer(path, rows) as f:
        f.write(json.dumps({"i": 5}) + "\n")
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows + [{"i": 5}]


def test_truncation_keeps_half_the_budget_of_a_long_prompt_even_at_one_token():
    from rlhfkit.data.pairs import truncate

    assert truncate([1, 2, 3, 4], [[5, 6], [7]], 4) == ([3, 4], [[5, 6], [7]])
    prompt, completions = truncate([1, 2, 3, 4], [[5, 6], [7]], 1)  # half of 1 is 0: prompt[-0:] kept all four
    assert len(prompt) + max(len(c) for c in completions) <= 1
