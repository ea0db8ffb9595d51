"""Read-only counts for /metrics, answered by the database at scrape time."""

from sqlalchemy import func, select

from .models import ChannelRow, RequestRow
from .store import Store
from .uninterrupted import uninterrupted


@uninterrupted
async def request_counts(store: Store) -> tuple[dict[tuple[str, str], int], list[str]]:
    """Requests by (channel, state), and every channel's name (those with no requests included).

    One GROUP BY over the (channel_id, state) index: cheap at any sensible scrape interval,
    and always equal to what is stored, however requests came and went.
    """
    query = (
        select(ChannelRow.name, RequestRow.state, func.count(RequestRow.id))
        .select_from(ChannelRow)
        .outerjoin(RequestRow, RequestRow.channel_id == ChannelRow.id)
        .group_by(ChannelRow.name, RequestRow.state)
    )
    async with store.session() as s:
        rows = (await s.execute(query)).all()
    counts = {(name, state): count for name, state, count in rows if state is not None}
    return counts, sorted({name for name, _, _ in rows})
