"""The ``dermvlm`` command line, one module per command group; each command is thin: parse, load config, call one
function. Heavy imports stay inside commands. The commands, in the order ``--help`` lists them, are registered here."""

from dermvlm.cli import evaluate, plan, serve, train
from dermvlm.cli.app import app, run
from dermvlm.cli.data import data_app
from dermvlm.cli.init import init
from dermvlm.cli.kg import kg_app
from dermvlm.cli.model import model_app, nano_app

app.command()(init)
app.command()(serve.serve)
app.command()(train.pipeline)
app.command()(train.train)
app.command()(plan.plan)
app.add_typer(evaluate.eval_app, name="eval")
app.command()(serve.chat)
app.command()(train.demo)
app.add_typer(nano_app, name="nano")
app.add_typer(model_app, name="model")
app.add_typer(train.config_app, name="config")
app.add_typer(data_app, name="data")
app.add_typer(kg_app, name="kg")

__all__ = ["app", "run"]
