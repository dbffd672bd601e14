from rlhfkit.data.convert import ratings_to_comparisons
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
    "ratings_to_comparisons",
    "read_records",
    "write_jsonl",
]
