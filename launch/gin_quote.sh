# Sourced by the launchers. gin_str VALUE: VALUE as a gin (Python) string literal, whatever quotes,
# backslashes or spaces it holds, e.g. --gin.MODEL_DIR="$(gin_str "$MODEL_DIR")".
gin_str() {
  local s=${1//\\/\\\\}
  s=${s//\'/\\\'}
  printf "'%s'" "$s"
}
