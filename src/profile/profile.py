# Runs as one cell inside a worker (df is the loaded dataset): prints one JSON
# object with the data overview used by prompts and each column's kind.
# Kept free of names a later cell could collide with: everything lives in
# _csv_agent_profile() and is deleted afterwards.
def _csv_agent_profile(df):
    import json as _json
    import re as _re
    import warnings as _warnings

    import pandas as _pd

    rows = int(len(df))
    # Date formats a column may have, each with how a question names it.
    # Ambiguous columns (every day <= 12) get the first format that parses
    # them all: ISO, then day first, then month first; the question states it.
    DATE_FORMATS = [
        ("%Y-%m-%d", "ISO, YYYY-MM-DD"),
        ("%Y-%m-%d %H:%M:%S", "ISO, YYYY-MM-DD HH:MM:SS"),
        ("%Y-%m-%dT%H:%M:%S", "ISO, YYYY-MM-DDTHH:MM:SS"),
        ("%Y-%m-%d %H:%M", "ISO, YYYY-MM-DD HH:MM"),
        ("%Y/%m/%d", "year first, YYYY/MM/DD"),
        ("%d-%m-%Y", "day first, DD-MM-YYYY"),
        ("%d/%m/%Y", "day first, DD/MM/YYYY"),
        ("%d.%m.%Y", "day first, DD.MM.YYYY"),
        ("%d-%m-%Y %H:%M", "day first, DD-MM-YYYY HH:MM"),
        ("%d/%m/%Y %H:%M", "day first, DD/MM/YYYY HH:MM"),
        ("%m-%d-%Y", "month first, MM-DD-YYYY"),
        ("%m/%d/%Y", "month first, MM/DD/YYYY"),
        ("%m/%d/%Y %H:%M", "month first, MM/DD/YYYY HH:MM"),
        ("%d %b %Y", "day first, DD Mon YYYY"),
        ("%b %d, %Y", "month first, Mon DD, YYYY"),
    ]
    format_names = dict(DATE_FORMATS)
    id_name = _re.compile(r"^(id|uuid|guid|index|unnamed: ?\d+|.*[_ ]id)$", _re.IGNORECASE)

    def kind_of(name, s):
        non_null = s.dropna()
        count = int(non_null.shape[0])
        unique = int(non_null.nunique())
        if id_name.match(str(name).strip()):
            return "id-like"
        if _pd.api.types.is_bool_dtype(s):
            return "categorical"
        if _pd.api.types.is_datetime64_any_dtype(s):
            return "datetime"
        if _pd.api.types.is_numeric_dtype(s):
            # Integers that are (nearly) all distinct count like row labels;
            # continuous measurements are often all distinct and stay numeric.
            if _pd.api.types.is_integer_dtype(s) and count >= 20 and unique >= 0.98 * count:
                return "id-like"
            return "numeric"
        if count == 0:
            return "text"
        sample = non_null.astype(str).str.strip().head(200)
        looks_numeric = sample.str.fullmatch(r"[-+]?\d+(\.\d+)?").mean() > 0.9
        if not looks_numeric and date_format(name, non_null) is not None:
            return "datetime"
        if count >= 20 and unique >= 0.98 * count:
            return "id-like"
        if unique <= max(20, 0.05 * count):
            return "categorical"
        return "text"

    formats_seen = {}

    def date_format(name, non_null):
        # The one explicit format (of DATE_FORMATS, in that order) that parses
        # the most non-missing values, surrounding spaces stripped; a column
        # is a date column only if that format parses at least 90 % of its
        # non-missing values (a 59 % parse would silently drop the rest).
        key = str(name)
        if key in formats_seen:
            return formats_seen[key]
        values = non_null.astype(str).str.strip()
        best, best_share = None, 0.0
        if len(values):
            sample = values.head(200)
            for fmt, _ in DATE_FORMATS:
                if _pd.to_datetime(sample, format=fmt, errors="coerce").notna().mean() < 0.9:
                    continue
                share = float(_pd.to_datetime(values, format=fmt, errors="coerce").notna().mean())
                if share > best_share:
                    best, best_share = fmt, share
        result = (best, best_share) if best is not None and best_share >= 0.9 else None
        formats_seen[key] = result
        return result

    def finite(x):
        # NaN (all missing) and infinities are not JSON numbers.
        x = float(x)
        return x if x == x and abs(x) != float("inf") else None

    columns = []
    for name in df.columns:
        s = df[name]
        missing = int(s.isna().sum())
        kind = kind_of(name, s)
        fmt = None
        if kind == "datetime" and not _pd.api.types.is_datetime64_any_dtype(s):
            fmt = date_format(name, s.dropna())
        columns.append(
            {
                "name": str(name),
                "dtype": str(s.dtype),
                "kind": kind,
                "missing": missing,
                "missing_share": round(missing / rows, 4) if rows else 0.0,
                "cardinality": int(s.nunique(dropna=True)),
                "target_ok": kind != "id-like",
                # Range of numeric columns, so templates can ask for positive
                # values (log transforms) before anything runs.
                "min": finite(s.min()) if kind == "numeric" else None,
                "max": finite(s.max()) if kind == "numeric" else None,
                # Rows of the rarest level of a categorical column, so group
                # tests can ask for enough values in every group.
                "min_level_count": int(s.value_counts().min()) if kind == "categorical" and s.notna().any() else None,
                # How a date column's text is parsed (strftime codes, values
                # stripped of surrounding spaces) and the share it parses.
                "date_format": fmt[0] if fmt else None,
                "date_format_name": format_names[fmt[0]] if fmt else None,
                "date_parsed_share": round(fmt[1], 4) if fmt else None,
            }
        )

    lines = [f"Shape: {rows} rows x {df.shape[1]} columns", "", "Columns and dtypes:"]
    for c in columns:
        lines.append(f"  {c['name']}: {c['dtype']} ({c['kind']}, {c['missing']} missing, {c['cardinality']} distinct)")
    with _pd.option_context("display.width", 120, "display.max_columns", 30):
        lines += ["", "First rows:", df.head(5).to_string()]
        numeric = df.select_dtypes("number")
        if numeric.shape[1]:
            lines += ["", "Summary of numeric columns:", numeric.describe().round(3).to_string()]
    missing = {c["name"]: c["missing"] for c in columns if c["missing"]}
    lines += ["", "Missing values: " + (", ".join(f"{k} {v}" for k, v in missing.items()) or "none")]
    for c in columns:
        if c["kind"] == "categorical":
            top = df[c["name"]].value_counts(dropna=True).head(5)
            values = ", ".join(f"{k} ({v})" for k, v in top.items())
            lines.append(f"Top values of {c['name']}: {values}")
    print(_json.dumps({"rows": rows, "columns": int(df.shape[1]), "overview": "\n".join(lines), "column_profiles": columns}))


_csv_agent_profile(df)
del _csv_agent_profile
