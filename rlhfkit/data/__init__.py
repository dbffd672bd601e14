from rlhfkit.data.io import DataError, InvalidRow, read_records, write_jsonl
from rlhfkit.data.records import Comparison, Demonstration, Message, Ranking, Rating, Record

__all__ = [
    "Comparison",
    "DataError",
    "Demonstration",
    "InvalidRow",
    "Message",
    "Ranking",
    "Rating",
    "Record",
    "read_records",
    "write_jsonl",
]
