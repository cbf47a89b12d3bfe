"""Pipelines: named steps passing artifacts, each a job on its own compute (see
:mod:`forgehub.pipelines.definition` and :mod:`forgehub.pipelines.runs`)."""
