"""
The storage backends behind L{ociklein.interfaces}: C{memory} and C{fs}, one
module or package each.  The core never imports them; the tap and embedders
choose one.
"""
