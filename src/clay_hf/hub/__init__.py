"""Publishing to the Hugging Face Hub: staging and upload (`publish`), model cards (`cards`) and their templates
(`templates/`, package data)."""
