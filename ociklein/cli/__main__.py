from ociklein.cli import run

run()
