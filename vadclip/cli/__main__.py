from vadclip.cli import entry

entry()
