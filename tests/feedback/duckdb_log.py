"""Reads Nurture's prediction log with DuckDB, straight from the store.

    duckdb_log.py ROOT MODEL          # the log's rows
    duckdb_log.py ROOT MODEL join     # answers joined with their outcomes (the query of docs/feedback.md)

ROOT is the registry's location: a directory (file backend) or
s3://bucket/prefix (S3 backend; endpoint and keys from AWS_ENDPOINT,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, read through s3fs). Prints one
JSON object: the rows of MODEL's log as DuckDB sees them.
"""

import json
import os
import sys

import duckdb


def main():
    root, model = sys.argv[1], sys.argv[2]
    connection = duckdb.connect()
    if root.startswith("s3://"):
        import s3fs

        connection.register_filesystem(
            s3fs.S3FileSystem(
                key=os.environ["AWS_ACCESS_KEY_ID"],
                secret=os.environ["AWS_SECRET_ACCESS_KEY"],
                client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT"]},
            )
        )
    pattern = f"{root}/feedback/predictions/model={model}/*/*.parquet"
    if sys.argv[3:] == ["join"]:
        batches = f"{root}/feedback/{model}/batches/*.json"
        relation = connection.sql(
            f"""
            WITH outcomes AS (
              SELECT unnest(outcomes) AS o FROM read_json('{batches}')
            )
            SELECT p.lead_id, p.version, p.score, o.label, o.value
            FROM read_parquet('{pattern}', hive_partitioning = true) p
            JOIN outcomes ON o.prediction_id = p.prediction_id
            """
        )
        rows = relation.fetchall()
        print(json.dumps({"columns": relation.columns, "rows": [list(map(str, r)) for r in rows]}))
        return
    try:
        relation = connection.sql(
            "SELECT * REPLACE (CAST(served_at AS VARCHAR) AS served_at, CAST(date AS VARCHAR) AS date) "
            f"FROM read_parquet('{pattern}', hive_partitioning = true) ORDER BY served_at"
        )
    except duckdb.IOException as error:
        if "No files found" not in str(error):
            raise
        print(json.dumps({"columns": [], "rows": []}))
        return
    columns = relation.columns
    rows = [dict(zip(columns, row)) for row in relation.fetchall()]
    print(json.dumps({"columns": columns, "rows": rows}))


if __name__ == "__main__":
    main()
