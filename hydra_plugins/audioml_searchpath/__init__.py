"""Hydra search-path plugin: users' config folders from ``AUDIOML_CONFIG_PATH`` (see
``audioml.config``) go before audioml's own configs, for audioml's apps only."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class AudiomlSearchPathPlugin(SearchPathPlugin):
    """Prepends each ``AUDIOML_CONFIG_PATH`` folder when the primary config is audioml's."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from audioml.config import CONFIG_PATH, user_config_dirs

        if not any(element.path == CONFIG_PATH.removeprefix("pkg://") or element.path == CONFIG_PATH
                   for element in search_path.get_path()):
            return  # another Hydra app in the same environment: leave it alone
        for folder in reversed(user_config_dirs()):
            search_path.prepend(provider="audioml-user", path=f"file://{folder}")
