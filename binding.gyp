{
  "variables": {
    "rewind_have_zstd%": "<!(node -p \"require('fs').existsSync('/usr/include/zstd.h') ? 1 : 0\")",
    "have_uring": "<!(test -f /usr/include/liburing.h && echo 1 || echo 0)"
  },
  "targets": [
    {
      "target_name": "rewind_native",
      "sources": [
        "addon/background.cc",
        "addon/digest.cc",
        "addon/errors.cc",
        "addon/io_ring.cc",
        "addon/rewind_native.cc",
        "addon/zstd.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "_FILE_OFFSET_BITS=64"
      ],
      "cflags!": [ "-fno-exceptions" ],
      "cflags_cc!": [ "-fno-exceptions", "-std=gnu++17", "-std=gnu++20" ],
      "cflags_cc": [ "-std=gnu++17", "-fexceptions", "-Wall", "-Wextra", "-Wno-unused-parameter" ],
      "conditions": [
        [ "rewind_have_zstd==1", {
          "defines": [ "REWIND_HAVE_ZSTD" ],
          "libraries": [ "-lzstd" ]
        } ],
        [ "have_uring==1", {
          "defines": [ "REWIND_HAVE_URING" ],
          "libraries": [ "-luring" ]
        } ],
        [ "OS=='mac'", {
          "xcode_settings": {
            "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
            "CLANG_CXX_LANGUAGE_STANDARD": "gnu++17"
          }
        } ]
      ]
    }
  ]
}
