from cocoon.cli import app

app()
