"""Task rows: conversations, a model per response, suggestions and the checks that make a row
storable on both databases; and the battles the leaderboard takes from labels."""

from __future__ import annotations

import json

import pytest

from rlhfkit.feedback.tasks import TaskError, parse_task
from rlhfkit.feedback.votes import battles_from_label


def test_a_conversation_prompt_keeps_its_turns_and_a_plain_rendering():
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    task = parse_task("row 1", {"prompt": chat, "responses": ["a", "b"]})
    assert task.messages == chat and task.prompt == "system: Be brief.\n\nuser: Hi"


@pytest.mark.parametrize(
    "row, field",
    [
        ({"prompt": [{"role": "robot", "content": "x"}], "responses": ["a", "b"]}, "prompt.0"),
        ({"prompt": [{"role": "system", "content": "x"}], "responses": ["a", "b"]}, "prompt"),
        ({"prompt": [{"role": "user", "content": ""}], "responses": ["a", "b"]}, "prompt.0.content"),
        ({"prompt": "p", "responses": [{"text": "a", "model": 3}, "b"]}, "models.0"),
        ({"prompt": "p", "responses": [{"model": "m"}, "b"]}, "responses.0.text"),
        ({"prompt": "p", "responses": ["a", "b"], "models": ["m"]}, "models"),
        ({"prompt": "p", "responses": [{"text": "a", "model": "m"}, "b"], "models": ["m", "n"]}, "models"),
        ({"prompt": "p", "responses": ["a", "b"], "suggestion": {"choice": 2}}, "suggestion"),
        ({"prompt": "p", "responses": ["a", "b"], "meta": ["not", "an", "object"]}, "meta"),
        ({"prompt": "p", "responses": ["a", "b"], "meta": {"x": float("nan")}}, "meta"),
        ({"prompt": "p", "responses": ["a", "b"], "id": "x" * 201}, "id"),
        ({"prompt": "p\x00", "responses": ["a", "b"]}, "prompt"),
    ],
)
def test_bad_rows_name_the_field(row, field):
    with pytest.raises(TaskError, match=f"row 7: field '{field}'"):
        parse_task("row 7", row)


def test_models_may_be_given_per_response_or_as_a_list():
    a = parse_task("r", {"prompt": "p", "responses": [{"text": "x", "model": "m1"}, {"text": "y", "model": "m2"}]})
    b = parse_task("r", {"prompt": "p", "responses": ["x", "y"], "models": ["m1", "m2"]})
    assert a.responses == b.responses == ["x", "y"] and a.models == b.models == ["m1", "m2"]
    assert parse_task("r", {"prompt": "p", "responses": ["x", "y"]}).models is None


def test_battles_from_labels():
    """Pairwise: the chosen model wins, tie and both bad are half each; a ranking gives its ordered
    pairs; unnamed models and a model against itself give nothing."""
    models = ["m0", "m1"]
    assert battles_from_label("pairwise", models, {"choice": 0}) == [("m0", "m1", 1.0)]
    assert battles_from_label("pairwise", models, {"choice": 1}) == [("m0", "m1", 0.0)]
    assert battles_from_label("pairwise", models, {"choice": "both_bad"}) == [("m0", "m1", 0.5)]
    assert battles_from_label("ranking", ["a", "b", "c"], {"ranking": [2, 0, 1]}) == [
        ("c", "a", 1.0),
        ("c", "b", 1.0),
        ("a", "b", 1.0),
    ]
    assert battles_from_label("ranking", ["a", None, "a"], {"ranking": [0, 1, 2]}) == []


def test_an_id_given_twice_in_one_load_is_named_not_dropped(tmp_path):
    """Two rows with id "a" (and 7 against "7"): the second was skipped as "already present", silently. Refused now,
    naming both lines."""
    from rlhfkit.feedback.tasks import add_tasks, read_task_file
    from tests.feedback.helpers import new_store, project_id

    path = tmp_path / "tasks.jsonl"
    for case, rows in enumerate(([{"id": "a"}, {"id": "a"}], [{"id": 7}, {"id": "7"}])):
        path.write_text("".join(json.dumps({"prompt": f"p{i}", "responses": ["x", "y"], **r}) + "\n"
                                for i, r in enumerate(rows)))  # fmt: skip
        (tmp_path / str(case)).mkdir()
        store = new_store(tmp_path / str(case))
        with store.write() as db, pytest.raises(TaskError, match=rf"{path}:2: field 'id': the same as {path}:1"):
            add_tasks(db, project_id(store), read_task_file(path))


def test_generated_tasks_of_two_batches_keep_their_own_ids():
    """`annotate generate` named every batch's tasks gen-0, gen-1, ...: a second batch loaded into the same project
    was skipped as already present. Ids now come from what made the task."""
    from rlhfkit.feedback.generate import sample_tasks

    first = sample_tasks("tiny", ["hello world"], max_new_tokens=4)
    second = sample_tasks("tiny", ["why the sky"], max_new_tokens=4)
    again = sample_tasks("tiny", ["hello world"], max_new_tokens=4)
    assert first[0]["id"] != second[0]["id"] and again[0]["id"] == first[0]["id"]
