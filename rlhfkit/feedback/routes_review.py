"""Reviewer API: the review queue (filtered and paged in SQL), accepting or rejecting labels, and the
model leaderboard (reviewers and admins only: annotators label without knowing which model wrote what)."""

from __future__ import annotations

import math
from datetime import timezone
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from rlhfkit.feedback.auth import require
from rlhfkit.feedback.limits import MAX_ID, Clean
from rlhfkit.feedback.models import User
from rlhfkit.feedback.review import QueueFilter, review_queue
from rlhfkit.feedback.routes_label import IdPath, ProjectName, label_out, project_of
from rlhfkit.feedback.schemas import LabelOut, LeaderboardOut, LeaderboardRowOut, ReviewIn, ReviewPage
from rlhfkit.feedback.store import LabelConflict, set_review
from rlhfkit.feedback.votes import model_battles

review = APIRouter(prefix="/api/review", tags=["review"])
reviewer = require("reviewer")


@review.get("/queue", response_model=ReviewPage, summary="Labels to review, with their items, filtered and paged")
def queue(
    request: Request,
    project: ProjectName = None,
    status: Literal["pending", "accepted", "rejected", "any"] = "pending",
    focus: Annotated[
        Literal["attention", "disagree", "flagged", "all"],
        Query(description="attention: flagged or disagreeing; disagree: the item's labels differ; flagged; all"),
    ] = "attention",
    kind: Literal["pairwise", "ranking", "rating", "thumbs"] | None = None,
    annotator: Annotated[Clean | None, Query(max_length=80)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    user: User = Depends(reviewer),
) -> ReviewPage:
    info = project_of(request, project)
    where = QueueFilter(status=status, focus=focus, kind=kind, annotator=annotator)
    with request.app.state.store.read_conn() as conn:
        page = review_queue(conn, info.id, user.id, where, limit, offset)
    items = [
        {
            **item,
            "label": label_out(item["label"], item["annotator"]).model_dump(),
            "reviewed_at": item["reviewed_at"] and item["reviewed_at"].replace(tzinfo=timezone.utc),
        }
        for item in page["items"]
    ]
    return ReviewPage(total=page["total"], limit=limit, offset=offset, items=items)


@review.post(
    "/labels/{label_id}",
    response_model=LabelOut,
    summary="Accept or reject a label (not your own). A rejected label is not exported and its item is served again",
)
def set_status(label_id: IdPath, body: ReviewIn, request: Request, user: User = Depends(reviewer)) -> LabelOut:
    with request.app.state.store.write() as db:
        try:
            label = set_review(db, user, label_id, body.status)
        except LabelConflict as e:
            raise HTTPException(e.status, str(e)) from None
        return label_out(label, db.get(User, label.annotator_id).username)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


@review.get(
    "/leaderboard",
    response_model=LeaderboardOut,
    summary="Models ranked by a Bradley–Terry fit of the pairwise votes, with 95% bootstrap intervals",
)
def leaderboard(
    request: Request,
    project: ProjectName = None,
    n_bootstrap: Annotated[int, Query(ge=0, le=2000)] = 500,
    user: User = Depends(reviewer),
) -> LeaderboardOut:
    from rlhfkit.evaluate.leaderboard import bradley_terry  # numpy: loaded when first asked for

    info = project_of(request, project)
    with request.app.state.store.read_conn() as conn:
        battles = model_battles(conn, info.id)
    rows = bradley_terry(battles, n_bootstrap=n_bootstrap, seed=0)
    return LeaderboardOut(
        project=info.name,
        battles=len(battles),
        n_bootstrap=n_bootstrap,
        rows=[LeaderboardRowOut(**{**r.__dict__, "lo": _finite(r.lo), "hi": _finite(r.hi)}) for r in rows],
    )
