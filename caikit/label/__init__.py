"""`caikit label`: people compare two responses to one conversation in a local web page.

sources.py  what is shown: pairs from a judge run, a generate run or a labelled-pairs file, and the sample
session.py  one labeller's progress over those pairs, appended to labels.jsonl (one fsync'd row per action)
server.py   the loopback HTTP server, its config and the `caikit label` command
page.html   the page: one self-contained file, model text inserted as text only
rows.py     reading labels.jsonl: latest choice per label, human preference pairs, `caikit label merge`
stats.py    agreement between labellers, and between the AI judge and people
"""
