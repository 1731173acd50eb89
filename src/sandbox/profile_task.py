# The default task of `csv-agent sandbox profile` and of the memory bench:
# what one analysis trace typically does to a dataset — summary statistics,
# the share of missing values, a grouped aggregation, a rank correlation and a
# significance test. Columns are picked by dtype and cardinality, never by
# name, so it runs on any CSV the zygote can load (as `df`).
import numpy as np
import pandas as pd
from scipy import stats

numeric = df.select_dtypes(include="number").columns.tolist()
categorical = [
    c for c in df.columns
    if c not in numeric and 2 <= df[c].nunique(dropna=True) <= 50
]

summary = df.describe(include="all")
missing = df.isna().mean().sort_values(ascending=False)

test = None
if numeric and categorical:
    key = categorical[0]
    grouped = df.groupby(key, observed=True)[numeric].agg(["mean", "median", "std", "count"])
    samples = [g.dropna().to_numpy() for _, g in df.groupby(key, observed=True)[numeric[0]]]
    samples = [s for s in samples if len(s) >= 2]
    if len(samples) >= 2:
        try:
            test = stats.kruskal(*samples)
        except ValueError:  # every value identical
            test = None
elif numeric:
    grouped = df[numeric].agg(["mean", "median", "std", "count"])
elif categorical:
    grouped = df.groupby(categorical[0], observed=True).size()
else:
    grouped = df.nunique()

if len(numeric) >= 2:
    corr = df[numeric].corr(method="spearman")
    pair = df[numeric[:2]].dropna()
    if test is None and len(pair) >= 3:
        test = stats.pearsonr(pair.iloc[:, 0], pair.iloc[:, 1])

p = None if test is None else float(test.pvalue)
print(f"describe {summary.shape}, grouped {grouped.shape}, p-value {p}")
