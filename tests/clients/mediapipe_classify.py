"""Classify images with MediaPipe Tasks' ImageClassifier, as an Android/iOS app would.

Run with the Python of the MediaPipe virtual environment (mediapipe +
ai-edge-litert, no TensorFlow, no edgeresnet): reads {"model": PATH, "images":
[PATH, ...]} as JSON on stdin and prints one JSON object: the mediapipe version
and, per image, the top category's index, name and score. A model MediaPipe
refuses prints {"error": message} and exits with status 3.
"""

import json
import sys


def main() -> int:
    request = json.load(sys.stdin)
    import mediapipe as mp
    from mediapipe.tasks import python as tasks
    from mediapipe.tasks.python import vision

    options = vision.ImageClassifierOptions(
        base_options=tasks.BaseOptions(model_asset_path=request["model"]), max_results=1
    )
    try:
        classifier = vision.ImageClassifier.create_from_options(options)
    except (ValueError, RuntimeError) as exc:
        print(json.dumps({"error": str(exc).strip().splitlines()[0]}))
        return 3
    results = []
    with classifier:
        for path in request["images"]:
            top = classifier.classify(mp.Image.create_from_file(path)).classifications[0].categories[0]
            results.append({"index": top.index, "name": top.category_name, "score": top.score})
    print(json.dumps({"mediapipe": mp.__version__, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
