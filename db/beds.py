"""A channel's beds as the database keeps them: one JSON document, `beds_json` on its row."""

import json

from broadcaster.core.bed import Bed, BedTrack, Segment, bed_from, scalars


def beds_json(bed: Bed | None, fading: tuple[Bed, ...]) -> str | None:
    if bed is None and not fading:
        return None
    return json.dumps({"bed": None if bed is None else _record(bed), "fading": [_record(b) for b in fading]})


def beds_from_json(text: str | None) -> tuple[Bed | None, tuple[Bed, ...]]:
    if not text:
        return None, ()
    stored = json.loads(text)
    bed = None if stored["bed"] is None else _bed(stored["bed"])
    return bed, tuple(_bed(b) for b in stored["fading"])


def _record(bed: Bed) -> dict:
    tracks = [
        {"request_id": t.request_id, "title": t.title, "segments": [[s.chunk_id, s.duration_ms] for s in t.segments]}
        for t in bed.tracks
    ]
    return {**scalars(bed), "tracks": tracks}


def _bed(record: dict) -> Bed:
    tracks = tuple(
        BedTrack(t["request_id"], t["title"], tuple(Segment(chunk_id, ms) for chunk_id, ms in t["segments"]))
        for t in record["tracks"]
    )
    return bed_from(record, tracks)
