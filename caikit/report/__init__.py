"""Run reports: PNG training curves (`plots`) and the HTML report of a run directory."""
