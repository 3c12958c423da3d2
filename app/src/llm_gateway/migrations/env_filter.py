"""What Alembic compares: the partitions of requests and responses are made by the
migration and by pg_partman, not modelled, so schema comparisons skip them, and skip the
per-partition copies PostgreSQL keeps of the foreign key (one for each partition of the
referenced table, besides the one on the parents)."""

from llm_gateway.models import is_partition


def include_name(name, type_, parent_names) -> bool:
    if type_ == "table":
        return not is_partition(name)
    return True


def include_object(obj, name, type_, reflected, compare_to) -> bool:
    if type_ == "foreign_key_constraint" and reflected:
        return not is_partition(obj.referred_table.name)
    return True


OPTIONS = {"include_name": include_name, "include_object": include_object}
