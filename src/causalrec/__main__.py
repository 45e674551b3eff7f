from causalrec.cli import app

app()
