from cxrlt.cli import app

app(prog_name="cxrlt")
